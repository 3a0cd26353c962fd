//go:build !linux

package nar

import (
	"fmt"
	"os"
	"slices"
	"syscall"
)

// dumpPath walks the tree with package os where there is no getdents.
func dumpPath(e *emitter, path string) error {
	return dumpOS(e, path, 0)
}

func dumpOS(e *emitter, fsPath string, depth int) error {
	fi, err := os.Lstat(fsPath)
	if err != nil {
		return fmt.Errorf("nar: dump: %w", err)
	}
	switch mode := fi.Mode(); mode.Type() {
	case 0:
		f, err := os.OpenFile(fsPath, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
		if err != nil {
			return fmt.Errorf("nar: dump: %w", err)
		}
		defer f.Close()
		if err := e.regular(f, fi.Size(), mode&0o100 != 0); err != nil {
			return fmt.Errorf("nar: dump %q: %w", fsPath, err)
		}
		e.token(tokClose)
		return nil
	case os.ModeSymlink:
		target, err := os.Readlink(fsPath)
		if err != nil {
			return fmt.Errorf("nar: dump: %w", err)
		}
		if msg := checkTarget(target); msg != "" {
			return fmt.Errorf("nar: dump %q: %s", fsPath, msg)
		}
		e.token(tokSymlink)
		e.str([]byte(target))
		e.token(tokClose)
		return nil
	case os.ModeDir:
		f, err := os.Open(fsPath)
		if err != nil {
			return fmt.Errorf("nar: dump: %w", err)
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return fmt.Errorf("nar: dump: %w", err)
		}
		slices.Sort(names) // bytewise, like Nix's std::map<std::string>
		e.token(tokDirectory)
		for _, name := range names {
			child := fsPath + "/" + name
			if depth+1 > MaxDepth {
				return fmt.Errorf("nar: dump %q: nested deeper than %d directories", child, MaxDepth)
			}
			if msg := checkName(name); msg != "" {
				return fmt.Errorf("nar: dump %q: %s", child, msg)
			}
			e.token(tokEntry)
			e.str([]byte(name))
			e.token(tokNode)
			if err := dumpOS(e, child, depth+1); err != nil {
				return err
			}
			e.token(tokClose)
			if e.err != nil {
				return fmt.Errorf("nar: dump %q: %w", child, e.err)
			}
		}
		e.token(tokClose)
		return nil
	}
	return fmt.Errorf("nar: dump: file %q has an unsupported type", fsPath)
}
