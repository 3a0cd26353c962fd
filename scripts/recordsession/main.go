// Command recordsession writes the client half of a `nix-store --serve`
// session to a file: the client hello, then a fixed list of read-only
// commands over the store paths of a paths file. scripts/record-fixtures
// feeds the file to the real `nix-store --serve --write` and keeps what it
// answers; internal/serve's session golden test replays the same bytes to
// ferry's server and compares.
//
//	go run ./scripts/recordsession -version 0x207 -paths paths.txt -o queries.requests
//
// The paths file has one "role path" pair a line ('#' starts a comment):
//
//	file     a regular file (DumpStorePath)
//	dir      a directory tree (DumpStorePath)
//	top      the path whose closure is asked for (QueryClosure)
//	closure  each path of top's closure (ExportPaths)
//	valid    any other valid path
//	missing  a well-formed store path that is not in the store
//
// The roles may repeat a path. The commands, in order:
//
//  1. QueryValidPaths lock=0 substitute=0, every path (missing included)
//  2. QueryValidPaths lock=1 substitute=0, the same set
//  3. QueryPathInfos, every path
//  4. QueryPathInfos, only the missing path
//  5. QueryPathInfos, no paths
//  6. QueryClosure includeOutputs=0, top
//  7. DumpStorePath of the file
//  8. DumpStorePath of the directory
//  9. ExportPaths of the closure
//
// None changes the store: lock=1 only adds temp roots for the session. This
// program only encodes requests (with ferry's wire encoders); it never reads
// a reply, so the recorded replies are Nix's alone.
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"ferry/internal/serve"
	"ferry/nix/storepath"
	"ferry/nix/wire"
)

func main() {
	version := flag.String("version", "0x207", "client version word to advertise")
	pathsFile := flag.String("paths", "", "the paths file (role path per line)")
	out := flag.String("o", "", "where to write the request stream")
	flag.Parse()
	if *pathsFile == "" || *out == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: recordsession [-version V] -paths FILE -o OUT")
		os.Exit(2)
	}
	v, err := strconv.ParseUint(*version, 0, 64)
	if err != nil {
		fail(fmt.Errorf("bad -version: %w", err))
	}
	roles, err := readPaths(*pathsFile)
	if err != nil {
		fail(err)
	}
	if err := write(*out, v, roles); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "recordsession:", err)
	os.Exit(1)
}

// readPaths reads the paths file into role -> paths, in file order.
func readPaths(name string) (map[string][]storepath.Path, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	roles := map[string][]storepath.Path{}
	for i, line := range strings.Split(string(data), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("%s:%d: want \"role path\"", name, i+1)
		}
		p, err := storepath.Parse(f[1])
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, i+1, err)
		}
		switch f[0] {
		case "file", "dir", "top", "closure", "valid", "missing":
		default:
			return nil, fmt.Errorf("%s:%d: unknown role %q", name, i+1, f[0])
		}
		roles[f[0]] = append(roles[f[0]], p)
	}
	for _, r := range []string{"file", "dir", "top", "closure", "missing"} {
		if len(roles[r]) == 0 {
			return nil, fmt.Errorf("%s: no %s path", name, r)
		}
	}
	return roles, nil
}

func write(name string, version uint64, roles map[string][]storepath.Path) error {
	var all []storepath.Path
	for _, r := range []string{"file", "dir", "top", "closure", "valid", "missing"} {
		all = append(all, roles[r]...)
	}
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	w := wire.NewWriter(f)
	serve.WriteClientHello(w, version)
	for _, lock := range []bool{false, true} {
		serve.WriteCommand(w, serve.CmdQueryValidPaths)
		serve.WriteQueryValidPaths(w, &serve.QueryValidPathsRequest{Lock: lock, Paths: all})
	}
	for _, ps := range [][]storepath.Path{all, roles["missing"], nil} {
		serve.WriteCommand(w, serve.CmdQueryPathInfos)
		serve.WritePathSet(w, ps)
	}
	serve.WriteCommand(w, serve.CmdQueryClosure)
	serve.WriteQueryClosure(w, false, roles["top"])
	for _, p := range []storepath.Path{roles["file"][0], roles["dir"][0]} {
		serve.WriteCommand(w, serve.CmdDumpStorePath)
		serve.WritePath(w, p)
	}
	serve.WriteCommand(w, serve.CmdExportPaths)
	err = serve.WriteExportPaths(w, roles["closure"])
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
