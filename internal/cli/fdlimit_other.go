//go:build !unix

package cli

func openFileLimit() int { return 0 }
