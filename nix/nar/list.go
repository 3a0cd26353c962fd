package nar

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// ListOptions control the output of List. The zero value lists the top
// level names only, like `nix nar ls NAR /`.
type ListOptions struct {
	// Long adds the type and permissions, the size, and symlink targets,
	// like `nix nar ls --long`.
	Long bool
	// Recursive lists every object below the root rather than only the
	// root's entries, like `nix nar ls --recursive`.
	Recursive bool
}

// List reads a NAR from r and writes a listing of it to w in the text
// format of `nix nar ls [--long] [--recursive] NAR /` (Nix 2.8.0): a
// directory root is not shown itself, its entries are shown as "./path";
// any other root is shown with an empty path. A long line is
//
//	<mode> <size right-aligned in 20 columns> <path>[ -> <target>]
//
// where mode is dr-xr-xr-x, -r--r--r--, -r-xr-xr-x or lrwxrwxrwx and size is
// 0 for directories and symlinks. The whole archive is read and validated.
func List(w io.Writer, r io.Reader, opts *ListOptions) error {
	if opts == nil {
		opts = new(ListOptions)
	}
	bw := bufio.NewWriter(w)
	nr := NewReader(r)
	for {
		h, err := nr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if h.Path == "" && h.Type == TypeDirectory {
			continue
		}
		if !opts.Recursive && strings.IndexByte(h.Path, '/') >= 0 {
			continue
		}
		name := h.Path
		if name != "" {
			name = "./" + name
		}
		if !opts.Long {
			fmt.Fprintf(bw, "%s\n", name)
			continue
		}
		var mode string
		switch {
		case h.Type == TypeDirectory:
			mode = "dr-xr-xr-x"
		case h.Type == TypeSymlink:
			mode = "lrwxrwxrwx"
		case h.Executable:
			mode = "-r-xr-xr-x"
		default:
			mode = "-r--r--r--"
		}
		fmt.Fprintf(bw, "%s %20d %s", mode, h.Size, name)
		if h.Type == TypeSymlink {
			fmt.Fprintf(bw, " -> %s", h.LinkTarget)
		}
		bw.WriteByte('\n')
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("nar: write listing: %w", err)
	}
	return nil
}
