package parity

import (
	"encoding/json"

	"ferry/internal/nixtest"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// graphNix is a small graph: an input source, a derivation with two
// outputs and one that refers to both; requiredSystemFeatures when
// features is not empty.
const graphNix = `{ system, features ? [] }:
let
  mk = name: attrs: derivation ({ inherit name system; builder = "/bin/sh"; requiredSystemFeatures = features; } // attrs);
  two = mk "parity-two" {
    outputs = [ "out" "dev" ];
    args = [ "-c" "echo dev of two > $dev && mkdir $out && echo $dev > $out/dev-ref && echo building two" ];
  };
in mk "parity-top" {
  src = ./greeting.txt;
  args = [ "-c" "mkdir $out && cat $src > $out/greeting && echo ${two} ${two.dev} > $out/refs && echo building top" ];
}
`

// graph writes the expression and its input source into the scenario's
// shared directory and returns the expression's path.
func (r *run) graph() string {
	r.writeFile("greeting.txt", "hello from the parity matrix\n")
	return r.writeFile("graph.nix", graphNix)
}

// source builds the graph into a fresh client store nixURI with real Nix
// and returns the top output.
func (r *run) source(nixURI string) string {
	r.t.Helper()
	return r.must(nil, "nix-build", "--store", nixURI, "--no-out-link", "--argstr", "system", r.system, r.graph())
}

// copyTo copies the graph's top output from a fresh source store into
// the remote store named by remoteStore with nix copy, and reports the
// outcome: nix copy's exit and lines, and what real Nix finds in
// queryURI (the remote store as Nix names it locally).
func (r *run) copyTo(remoteStore, queryURI string, params ...string) outcome {
	src := filepath.Join(r.dir, "src")
	out := r.source(src)
	code, lines := r.cmd(nil, "nix", "copy", "--no-check-sigs", "--from", src, "--to", r.uri(remoteStore, params...), out)
	o := outcome{Exit: code, Lines: lines, Dirs: r.dirs()}
	if code == 0 {
		o.Store = r.contents(nil, queryURI, out)
	}
	return o
}

var scenarios = []scenario{
	// Item 1: store URIs with parameters, as the remote's --store.
	{name: "remote-store DIR?state=&log=", item: 1, run: func(r *run) outcome {
		remote := r.dir + "/dst?state=" + r.dir + "/state&log=" + r.dir + "/log"
		return r.copyTo(remote, remote)
	}},
	{name: "remote-store local?root=DIR", item: 1, run: func(r *run) outcome {
		return r.copyTo("local?root="+r.dir+"/dst", r.dir+"/dst")
	}},
	{name: "remote-store with unknown parameters", item: 1, run: func(r *run) outcome {
		return r.copyTo(r.dir+"/dst?foo=bar&read-only=true", r.dir+"/dst")
	}},
	{name: "remote-store with a relative store=", item: 1, run: func(r *run) outcome {
		return r.copyTo(r.dir+"/dst?store=relative", r.dir+"/dst")
	}},
	{name: "remote-store with a bad require-sigs=", item: 1, run: func(r *run) outcome {
		return r.copyTo(r.dir+"/dst?require-sigs=maybe", r.dir+"/dst")
	}},

	// A serve session keeps no build log (Nix's getBuildSettings), so
	// log= on the remote store changes nothing there: both say so.
	{name: "remote-store log= and the build log", item: 1, run: func(r *run) outcome {
		local := r.dir + "/local"
		remote := r.dir + "/dst?log=" + r.dir + "/logs"
		builders := r.uri(remote) + " " + r.system + " " + r.tr.key + " 1 1"
		expr := r.graph()
		code, lines := r.cmd(nil, "nix-build", "--store", local, "-j0", "--no-out-link", "--builders", builders, "--argstr", "system", r.system, expr)
		o := outcome{Exit: code, Lines: lines, Dirs: r.dirs()}
		if code == 0 {
			drv := r.must(nil, "nix-instantiate", "--store", local, "--argstr", "system", r.system, expr)
			_, log := r.cmd(nil, "nix-store", "--store", remote, "--read-log", drv)
			o.Store = append(r.contents(nil, remote, topOut(lines)), log...)
		}
		return o
	}},

	// Item 2: a logical store directory other than /nix/store.
	{name: "logical store dir: copy", item: 2, run: func(r *run) outcome {
		l := r.shared + "/logical/store"
		o := r.copyToLogical(l)
		return o
	}},
	{name: "logical store dir: remote build", item: 2, run: func(r *run) outcome {
		l := r.shared + "/logical/store"
		local := r.dir + "/local?store=" + l
		remote := r.dir + "/dst?store=" + l
		builders := r.uri(remote, "store="+queryEscape(l)) + " " + r.system + " " + r.tr.key + " 1 1"
		code, lines := r.cmd(nil, "nix-build", "--store", local, "-j0", "--no-out-link", "--builders", builders, "--argstr", "system", r.system, r.graph())
		o := outcome{Exit: code, Lines: lines, Dirs: r.dirs()}
		if code == 0 {
			out := topOut(lines)
			o.Store = append(r.contents(nil, remote, out), r.contents(nil, local, out)...)
			o.Store = append(o.Store, r.drvFiles(r.dir+"/dst/nix/store")...)
		}
		return o
	}},
	{name: "NIX_STORE_DIR, NIX_STATE_DIR, NIX_LOG_DIR", item: 2, run: func(r *run) outcome {
		// No --store on the remote: the environment names its store.
		e := r.shared + "/env"
		makeWritable(e)
		os.RemoveAll(e)
		env := []string{"NIX_STORE_DIR=" + e + "/store", "NIX_STATE_DIR=" + r.dir + "/state", "NIX_LOG_DIR=" + r.dir + "/log"}
		wrapper := r.wrapper(env...)
		src := r.dir + "/src?store=" + e + "/store"
		out := r.source(src)
		prog := r.program
		r.program = wrapper
		code, lines := r.cmd(nil, "nix", "copy", "--no-check-sigs", "--from", src, "--to", r.uri("", "store="+queryEscape(e+"/store")), out)
		r.program = prog
		o := outcome{Exit: code, Lines: lines, Dirs: r.dirs()}
		if code == 0 {
			o.Store = r.contents(nil, "local?store="+e+"/store&state="+r.dir+"/state", out)
		}
		return o
	}},

	{name: "NIX_STORE_DIR: remote build", item: 2, run: func(r *run) outcome {
		e := r.shared + "/env"
		makeWritable(e)
		os.RemoveAll(e)
		env := []string{"NIX_STORE_DIR=" + e + "/store", "NIX_STATE_DIR=" + r.dir + "/state", "NIX_LOG_DIR=" + r.dir + "/log"}
		wrapper := r.wrapper(env...)
		local := r.dir + "/local?store=" + e + "/store"
		prog := r.program
		r.program = wrapper
		builders := r.uri("", "store="+queryEscape(e+"/store")) + " " + r.system + " " + r.tr.key + " 1 1"
		r.program = prog
		code, lines := r.cmd(nil, "nix-build", "--store", local, "-j0", "--no-out-link", "--builders", builders, "--argstr", "system", r.system, r.graph())
		o := outcome{Exit: code, Lines: lines, Dirs: r.dirs()}
		if code == 0 {
			out := topOut(lines)
			o.Store = append(r.contents(nil, "local?store="+e+"/store&state="+r.dir+"/state", out), r.contents(nil, local, out)...)
			o.Store = append(o.Store, r.drvFiles(e+"/store")...)
		}
		return o
	}},

	// Item 3: serving a store that is not local (a relay to the remote).
	{name: "relay: copy", item: 3, run: func(r *run) outcome {
		relay := r.relay(r.dir + "/far")
		src := filepath.Join(r.dir, "src")
		out := r.source(src)
		code, lines := r.cmd(nil, "nix", "copy", "--no-check-sigs", "--from", src, "--to", "ssh://"+r.tr.host+"?remote-program="+queryEscape(relay), out)
		o := outcome{Exit: code, Lines: lines, Dirs: r.dirs()}
		if code == 0 {
			o.Store = r.contents(nil, r.dir+"/far", out)
		}
		return o
	}},
	{name: "relay: remote build", item: 3, run: func(r *run) outcome {
		relay := r.relay(r.dir + "/far")
		builders := "ssh://" + r.tr.host + "?remote-program=" + queryEscape(relay) + " " + r.system + " " + r.tr.key + " 1 1"
		code, lines := r.cmd(nil, "nix-build", "--store", r.dir+"/local", "-j0", "--no-out-link", "--builders", builders, "--argstr", "system", r.system, r.graph())
		o := outcome{Exit: code, Lines: lines, Dirs: r.dirs()}
		if code == 0 {
			o.Store = append(r.contents(nil, r.dir+"/far", topOut(lines)), r.drvFiles(r.dir+"/far/nix/store")...)
		}
		return o
	}},

	// Item 5: the remote's post-build-hook.
	{name: "post-build-hook on the remote", item: 5, run: func(r *run) outcome {
		return r.hookBuild(0)
	}},
	{name: "failing post-build-hook on the remote", item: 5, run: func(r *run) outcome {
		return r.hookBuild(3)
	}},

	// Item 6: floating content-addressed derivations, built remotely.
	{name: "content-addressed derivations: remote build", item: 6, run: func(r *run) outcome {
		expr := r.writeFile("ca.nix", caNix)
		conf := nixtest.Config + "experimental-features = nix-command ca-derivations\n"
		prog := r.program
		r.program = r.script("remote-program.sh", "unset NIX_REMOTE\nexport NIX_CONFIG="+shq(conf)+"\nexec "+prog+" \"$@\"\n")
		// Nix asks the hook for a machine with feature ca-derivations.
		builders := r.uri(r.dir+"/dst") + " " + r.system + " " + r.tr.key + " 1 1 ca-derivations"
		r.program = prog
		local := r.dir + "/local"
		code, lines := r.cmd([]string{"NIX_CONFIG=" + conf}, "nix-build", "--store", local, "-j0", "--no-out-link", "--builders", builders, "--argstr", "system", r.system, expr)
		o := outcome{Exit: code, Lines: lines, Dirs: r.dirs()}
		if code == 0 {
			out := ""
			for _, l := range lines {
				if strings.HasSuffix(l, "-parity-ca-top") {
					out = l
				}
			}
			o.Store = append(r.contents(nil, r.dir+"/dst", out), r.contents(nil, local, out)...)
			o.Store = append(o.Store, r.drvFiles(r.dir+"/dst/nix/store")...)
		}
		return o
	}},

	// Item 4: system-features on the remote's store URI replace nix.conf's.
	{name: "system-features on remote-store: accepted", item: 4, run: func(r *run) outcome {
		return r.featureBuild("foo", "foo")
	}},
	{name: "system-features on remote-store: refused", item: 4, run: func(r *run) outcome {
		return r.featureBuild("foo", "bar")
	}},
}

// caNix is two floating content-addressed derivations, the second using
// the first, one with a self-reference.
const caNix = `{ system }:
let
  mk = name: attrs: derivation ({ inherit name system; builder = "/bin/sh"; __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; } // attrs);
  dep = mk "parity-ca-dep" { args = [ "-c" "mkdir $out && echo $out > $out/self && echo building ca dep" ]; };
in mk "parity-ca-top" { args = [ "-c" "mkdir $out && cat ${dep}/self > $out/dep && echo building ca top" ]; }
`

// hookBuild builds the graph remotely with a post-build-hook configured
// on the remote side, exiting with status exit, and reports what the
// hook saw as well.
func (r *run) hookBuild(exit int) outcome {
	record := r.dir + "/hook.log"
	hook := r.script("hook.sh", fmt.Sprintf("echo \"hook ran for $DRV_PATH\"\necho \"$DRV_PATH\" >> %s\nexit %d\n", shq(record), exit))
	conf := nixtest.Config + "post-build-hook = " + hook + "\n"
	prog := r.program
	r.program = r.script("remote-program.sh", "unset NIX_REMOTE\nexport NIX_CONFIG="+shq(conf)+"\nexec "+prog+" \"$@\"\n")
	builders := r.uri(r.dir+"/dst") + " " + r.system + " " + r.tr.key + " 1 1"
	r.program = prog
	code, lines := r.cmd(nil, "nix-build", "--store", r.dir+"/local", "-j0", "--no-out-link", "--builders", builders, "--argstr", "system", r.system, r.graph())
	o := outcome{Exit: code, Lines: lines, Dirs: r.dirs()}
	o.Store = fileLines(record)
	if code == 0 {
		o.Store = append(o.Store, r.contents(nil, r.dir+"/dst", topOut(lines))...)
	}
	return o
}

// relay writes a remote program that serves, with the program under
// test, the store far through one more hop: the program under test again,
// run directly as for ssh://localhost.
func (r *run) relay(far string) string {
	inner := "ssh://localhost?remote-program=" + queryEscape(r.program) + "&remote-store=" + queryEscape(far)
	return r.script("relay.sh", "unset NIX_REMOTE\nexec "+r.program+" --serve --write --store "+shq(inner)+"\n")
}

// copyToLogical copies into a remote whose logical store directory is l,
// from a client store with the same one.
func (r *run) copyToLogical(l string) outcome {
	src := r.dir + "/src?store=" + l
	out := r.source(src)
	remote := r.dir + "/dst?store=" + l
	code, lines := r.cmd(nil, "nix", "copy", "--no-check-sigs", "--from", src, "--to", r.uri(remote, "store="+queryEscape(l)), out)
	o := outcome{Exit: code, Lines: lines, Dirs: r.dirs()}
	if code == 0 {
		o.Store = r.contents(nil, remote, out)
	}
	return o
}

// featureBuild builds the graph, each derivation requiring feature want,
// on a machine that offers want (so Nix's hook sends it there) whose
// remote store declares system-features=have.
func (r *run) featureBuild(want, have string) outcome {
	local := r.dir + "/local"
	remote := r.dir + "/dst?system-features=" + have
	builders := r.uri(remote) + " " + r.system + " " + r.tr.key + " 1 1 " + want
	code, lines := r.cmd(nil, "nix-build", "--store", local, "-j0", "--no-out-link", "--builders", builders,
		"--argstr", "system", r.system, "--arg", "features", fmt.Sprintf(`[ %q ]`, want), r.graph())
	o := outcome{Exit: code, Lines: lines, Dirs: r.dirs()}
	if code == 0 {
		out := topOut(lines)
		o.Store = r.contents(nil, r.dir+"/dst", out)
	}
	return o
}

// drvFiles lists the .drv files in a physical store directory.
func (r *run) drvFiles(real string) []string {
	ents, _ := os.ReadDir(real)
	var ds []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".drv") {
			ds = append(ds, "drv on the remote: "+e.Name())
		}
	}
	return ds
}

// pathInfoLines turns nix path-info --json into one line per path.
func pathInfoLines(data []byte) []string {
	var infos []struct {
		Path       string   `json:"path"`
		NarHash    string   `json:"narHash"`
		NarSize    uint64   `json:"narSize"`
		References []string `json:"references"`
		Deriver    string   `json:"deriver"`
		CA         string   `json:"ca"`
		Valid      *bool    `json:"valid"`
	}
	if err := json.Unmarshal(data, &infos); err != nil {
		return []string{"bad path-info JSON: " + err.Error()}
	}
	var ls []string
	for _, i := range infos {
		if i.Valid != nil && !*i.Valid {
			ls = append(ls, i.Path+" invalid")
			continue
		}
		sort.Strings(i.References)
		ls = append(ls, fmt.Sprintf("%s %s %d refs=%s deriver=%s ca=%s", i.Path, i.NarHash, i.NarSize, strings.Join(i.References, ","), i.Deriver, i.CA))
	}
	sort.Strings(ls)
	return ls
}
