package parity

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"ferry/internal/nixtest"
	"ferry/internal/sshtest"
)

var table = flag.Bool("table", false, "print the matrix of outcomes, stock Nix beside ferry (scripts/nix-parity)")

// A transport is how the client reaches the remote program: Nix running it
// itself for ssh://localhost, or a real sshd on loopback.
type transport struct {
	name string
	host string   // the URI's authority
	env  []string // extra client environment (NIX_SSHOPTS)
	key  string   // the ssh key for a machines line, "-" for none
}

// A run is one side of one scenario on one transport: its own temporary
// directory and the remote program under test.
type run struct {
	t       *testing.T
	tr      transport
	program string // "nix-store" or the ferry binary
	dir     string // this run's private directory
	shared  string // the scenario's directory, the same for both sides
	system  string
}

// topOut is the output path nix-build printed for the graph's top.
func topOut(lines []string) string {
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "/") && strings.HasSuffix(lines[i], "-parity-top") {
			return lines[i]
		}
	}
	return ""
}

// outcome is what a person sees of a scenario: the exit status, the
// normalised lines the client printed, and what the stores hold.
type outcome struct {
	Exit int
	// Lines are compared in sorted order: the client's own lines and the
	// remote's (its stderr, passed on) come on two streams whose
	// interleaving is a race. Raw has them as printed.
	Lines []string
	Raw   []string
	Store []string
	Dirs  []string
}

type scenario struct {
	name string
	item int // the item of the parity issue it shows
	run  func(r *run) outcome
}

// result is one row of the matrix.
type result struct {
	scenario, transport string
	item                int
	nix, ferry          outcome
}

var (
	resultsMu sync.Mutex
	results   []result
)

// TestParity runs every scenario with remote-program=nix-store and with
// remote-program=ferry, over ssh://localhost and over a real sshd, and
// requires the same outcome. With -table it prints the matrix.
func TestParity(t *testing.T) {
	nixtest.RequireNix(t)
	nixtest.Require(t, "ssh", "busybox")
	ferry := nixtest.FerryBin(t)
	system := strings.Trim(nixtest.Line(t, "nix-instantiate", "--eval", "--expr", "builtins.currentSystem"), `"`)
	s := sshtest.Start(t, nil)
	transports := []transport{
		{name: "localhost", host: "localhost", key: "-"},
		{name: "sshd", host: s.Destination(), env: s.Env(), key: s.KeyFile},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			for _, tr := range transports {
				t.Run(tr.name, func(t *testing.T) {
					// A short directory: Nix names a builder's slot lock
					// files after its whole URI, which must fit in a name.
					shared, err := os.MkdirTemp("", "parity-")
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { makeWritable(shared); os.RemoveAll(shared) })
					side := func(program, name string) outcome {
						dir := filepath.Join(shared, name)
						if err := os.MkdirAll(dir, 0o755); err != nil {
							t.Fatal(err)
						}
						r := &run{t: t, tr: tr, program: program, dir: dir, shared: shared, system: system}
						o := sc.run(r)
						o.Raw = r.normalise(o.Lines)
						o.Lines = slices.Sorted(slices.Values(o.Raw))
						o.Store = r.normalise(o.Store)
						o.Dirs = r.normalise(o.Dirs)
						return o
					}
					nix := side("nix-store", "nix")
					fer := side(ferry, "ferry")
					resultsMu.Lock()
					results = append(results, result{sc.name, tr.name, sc.item, nix, fer})
					resultsMu.Unlock()
					if diff := cmp.Diff(nix, fer, ignoreRaw); diff != "" {
						t.Errorf("remote-program=nix-store and remote-program=ferry differ (-nix +ferry):\n%s", diff)
					}
				})
			}
		})
	}
	if *table {
		printTable(os.Stdout)
	}
}

var ignoreRaw = cmpopts.IgnoreFields(outcome{}, "Raw")

func printTable(w *os.File) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "item\tscenario\ttransport\tnix-store\tferry\tsame")
	for _, r := range results {
		same := "yes"
		if !cmp.Equal(r.nix, r.ferry, ignoreRaw) {
			same = "NO"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", r.item, r.scenario, r.transport, r.nix.summary(), r.ferry.summary(), same)
	}
	tw.Flush()
	for _, r := range results {
		fmt.Fprintf(w, "\n== %s over %s\n-- nix-store:\n%s-- ferry:\n%s", r.scenario, r.transport, r.nix.detail(), r.ferry.detail())
	}
}

func (o outcome) summary() string {
	last := ""
	if len(o.Raw) > 0 {
		last = o.Raw[len(o.Raw)-1]
		if len(last) > 60 {
			last = last[:57] + "..."
		}
	}
	return fmt.Sprintf("exit %d, %d store lines; %s", o.Exit, len(o.Store), last)
}

func (o outcome) detail() string {
	var b strings.Builder
	fmt.Fprintf(&b, "exit %d\n", o.Exit)
	for _, l := range o.Raw {
		fmt.Fprintf(&b, "  | %s\n", l)
	}
	for _, l := range o.Store {
		fmt.Fprintf(&b, "  store: %s\n", l)
	}
	return b.String()
}

// normalise replaces what differs between the two sides and is not the
// behaviour under test: the run's directory, the program's path, the
// transport's host, and Nix's usage hint.
func (r *run) normalise(lines []string) []string {
	rep := strings.NewReplacer(r.dir, "$RUN", r.shared, "$SHARED", r.program, "$PROGRAM", r.tr.host, "$HOST")
	var out []string
	for _, l := range lines {
		l = strings.TrimRight(rep.Replace(l), " \r")
		if l == "" || strings.HasPrefix(l, "Try '") && strings.HasSuffix(l, "--help' for more information.") {
			continue
		}
		out = append(out, l)
	}
	return out
}

// cmd runs a client command with the run's environment and returns its
// exit status, stdout and stderr lines.
func (r *run) cmd(env []string, name string, args ...string) (int, []string) {
	r.t.Helper()
	c := exec.Command(name, args...)
	c.Env = append(append(nixtest.Env(filepath.Join(r.dir, "client")), r.tr.env...), env...)
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	err := c.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		r.t.Fatalf("%s: %v", name, err)
	}
	return code, strings.Split(out.String(), "\n")
}

// must runs a set-up command that must succeed and returns its stdout.
func (r *run) must(env []string, name string, args ...string) string {
	r.t.Helper()
	c := exec.Command(name, args...)
	c.Env = append(nixtest.Env(filepath.Join(r.dir, "setup")), env...)
	var out, stderr bytes.Buffer
	c.Stdout, c.Stderr = &out, &stderr
	if err := c.Run(); err != nil {
		r.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(out.String())
}

// uri is the ssh:// store URI of the remote program with the given
// remote-store (none if "") and further parameters.
func (r *run) uri(remoteStore string, params ...string) string {
	q := []string{"remote-program=" + queryEscape(r.program)}
	if remoteStore != "" {
		q = append(q, "remote-store="+queryEscape(remoteStore))
	}
	return "ssh://" + r.tr.host + "?" + strings.Join(append(q, params...), "&")
}

// queryEscape escapes what would end a URI parameter's value, and
// nothing else, so that names stay readable (and short).
func queryEscape(v string) string {
	return strings.NewReplacer("%", "%25", "&", "%26", "?", "%3F", "=", "%3D", " ", "%20", "#", "%23").Replace(v)
}

// wrapper writes a remote program that runs the one under test with env
// set and NIX_REMOTE unset (sshtest sets it), for remote sides that take
// their store from the environment.
func (r *run) wrapper(env ...string) string {
	r.t.Helper()
	return r.script("remote-program.sh", "unset NIX_REMOTE\nexport "+strings.Join(env, " ")+"\nexec "+r.program+" \"$@\"\n")
}

// script writes an executable shell script into the run's directory.
func (r *run) script(name, body string) string {
	r.t.Helper()
	p := filepath.Join(r.dir, name)
	if err := nixtest.WriteExecutable(p, []byte("#!/bin/sh\n"+body)); err != nil {
		r.t.Fatal(err)
	}
	return p
}

// shq quotes s for a POSIX shell.
func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// contents lists what the store nixURI holds of the closure of paths, as
// real Nix reads it: path, NAR hash, references, deriver and ca.
func (r *run) contents(env []string, nixURI string, paths ...string) []string {
	r.t.Helper()
	if len(paths) == 0 {
		return nil
	}
	c := exec.Command("nix", append([]string{"path-info", "--json", "--recursive", "--store", nixURI}, paths...)...)
	c.Env = append(nixtest.Env(filepath.Join(r.dir, "query")), env...)
	out, err := c.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		return []string{"nix path-info failed: " + strings.TrimSpace(string(stderr))}
	}
	return pathInfoLines(out)
}

// dirs lists the directories under the run's directory, to show where a
// store put its parts (and that no name holds a "?"), leaving out the
// inside of store directories and of client state.
func (r *run) dirs() []string {
	var ds []string
	filepath.WalkDir(r.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() || p == r.dir {
			return nil
		}
		rel, _ := filepath.Rel(r.dir, p)
		top := strings.SplitN(rel, "/", 2)[0]
		if top == "client" || top == "setup" || top == "query" || top == "home" {
			return filepath.SkipDir
		}
		if strings.Contains(d.Name(), "?") {
			r.t.Errorf("a directory with a '?' in its name: %s", p)
		}
		ds = append(ds, p)
		if storeEntry.MatchString(d.Name()) || d.Name() == "db" || d.Name() == "gcroots" || d.Name() == "profiles" || d.Name() == "temproots" || d.Name() == "userpool" || strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir
		}
		return nil
	})
	sort.Strings(ds)
	return ds
}

var storeEntry = regexp.MustCompile(`^[0-9a-df-np-sv-z]{32}-`)

// writeFile writes a file under the scenario's shared directory.
func (r *run) writeFile(name, text string) string {
	r.t.Helper()
	p := filepath.Join(r.shared, name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		r.t.Fatal(err)
	}
	return p
}

// fileLines reads a file's lines ("" if it is missing).
func fileLines(p string) []string {
	data, err := os.ReadFile(p)
	if err != nil {
		return []string{"missing: " + filepath.Base(p)}
	}
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}

// makeWritable lets a test remove a store Nix left read-only.
func makeWritable(dir string) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
}
