//go:build !linux

package proc

import "syscall"

// setParentDeath does nothing where the kernel has no parent-death signal;
// a child there outlives a killed parent.
func setParentDeath(*syscall.SysProcAttr, syscall.Signal) {}
