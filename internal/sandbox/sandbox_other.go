//go:build !linux

package sandbox

import (
	"context"
	"errors"
)

var errUnsupported = errors.New("builds are only supported on Linux")

// Init does nothing outside Linux.
func Init() {}

// Available reports that there is no sandbox outside Linux.
func Available() error { return errUnsupported }

// Process is a running builder.
type Process struct{}

// Start fails outside Linux.
func Start(ctx context.Context, spec *Spec) (*Process, error) { return nil, errUnsupported }

// Pid returns 0.
func (p *Process) Pid() int { return 0 }

// Kill does nothing.
func (p *Process) Kill() error { return nil }

// Wait returns an error.
func (p *Process) Wait() error { return errUnsupported }
