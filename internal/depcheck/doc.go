// Package depcheck holds no code: its test keeps the module's import graph
// one-way (the way go-containerregistry's depcheck test does). The rules are
// in depcheck_test.go; each has a synthetic graph that must break it, so a
// rule that stops biting fails too.
package depcheck
