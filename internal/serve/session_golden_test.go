package serve

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"ferry/internal/localstore"
	"ferry/nix/export"
	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/storepath"
	"ferry/nix/wire"
	"ferry/store"
)

// The sessions in testdata/sessions were recorded from the real `nix-store
// --serve --write` of Nix 2.8 by `scripts/record-fixtures serve`:
// NAME.requests is what a client sent (written by scripts/recordsession),
// NAME.replies is what nix-store answered, over a store that had imported
// store.export; paths.txt gives the role of each path the requests name.
//
// TestSessionGolden replays each request stream to ferry's Server over a
// fresh local store that imported the same store.export and requires
// ferry's output to be the recorded replies byte for byte. It also decodes
// the recorded replies with the client-side codecs, so that a recording
// ferry cannot parse fails too.
func TestSessionGolden(t *testing.T) {
	td := filepath.Join("testdata", "sessions")
	reqFiles, err := filepath.Glob(filepath.Join(td, "*.requests"))
	if err != nil {
		t.Fatal(err)
	}
	if len(reqFiles) < 2 {
		t.Fatalf("%s: %d sessions, want at least 2 (run scripts/record-fixtures serve)", td, len(reqFiles))
	}
	exp, err := os.ReadFile(filepath.Join(td, "store.export"))
	if err != nil {
		t.Fatal(err)
	}
	roles := readSessionPaths(t, filepath.Join(td, "paths.txt"))
	for _, rf := range reqFiles {
		name := strings.TrimSuffix(filepath.Base(rf), ".requests")
		t.Run(name, func(t *testing.T) {
			req, err := os.ReadFile(rf)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(filepath.Join(td, name+".replies"))
			if err != nil {
				t.Fatal(err)
			}
			version, cmds, err := decodeSessionRequests(req)
			if err != nil {
				t.Fatalf("%s.requests: %v", name, err)
			}
			// Nix's replies must parse, and say what the store holds.
			wantReplies, err := decodeSessionReplies(want, version, cmds)
			if err != nil {
				t.Errorf("%s.replies (Nix): %v", name, err)
			} else {
				checkSessionReplies(t, roles, version, cmds, wantReplies)
			}

			got := runSession(t, exp, req)
			if bytes.Equal(got, want) {
				return
			}
			gotReplies, gerr := decodeSessionReplies(got, version, cmds)
			t.Errorf("ferry's replies differ from Nix's: %s", describeDiff(got, want, cmds, gotReplies, wantReplies))
			if gerr != nil {
				t.Logf("ferry's replies do not decode: %v", gerr)
			}
		})
	}
}

// runSession imports exp into a fresh ferry local store and serves req over
// it with --write, returning what the server wrote.
func runSession(t *testing.T, exp, req []byte) []byte {
	t.Helper()
	ctx := context.Background()
	st, err := localstore.Open(t.TempDir(), &localstore.Options{NoSync: true, ReservedSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if _, err := st.Import(ctx, bytes.NewReader(exp)); err != nil {
		t.Fatalf("import store.export: %v", err)
	}
	// localserve.NewBackend is NewStoreBackend with a builder, which these
	// sessions do not use (and localserve imports this package).
	var out bytes.Buffer
	if err := NewServer(NewStoreBackend(st, nil), &Options{Write: true}).Serve(ctx, bytes.NewReader(req), &out); err != nil {
		t.Errorf("Serve: %v", err)
	}
	return out.Bytes()
}

// readSessionPaths reads paths.txt: role -> paths, in file order.
func readSessionPaths(t *testing.T, name string) map[string][]storepath.Path {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	roles := map[string][]storepath.Path{}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if len(f) != 2 {
			t.Fatalf("%s: bad line %q", name, line)
		}
		p, err := storepath.Parse(f[1])
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		roles[f[0]] = append(roles[f[0]], p)
	}
	for _, r := range []string{"file", "dir", "top", "closure", "missing"} {
		if len(roles[r]) == 0 {
			t.Fatalf("%s: no %s path", name, r)
		}
	}
	return roles
}

// sessionCmd is one request of a recorded session.
type sessionCmd struct {
	cmd     Command
	lock    bool             // QueryValidPaths
	paths   []storepath.Path // every command but DumpStorePath
	path    storepath.Path   // DumpStorePath
	reqOff  int              // offset of the command number in .requests
	include bool             // QueryClosure's includeOutputs
}

func (c *sessionCmd) String() string {
	switch c.cmd {
	case CmdQueryValidPaths:
		return fmt.Sprintf("%v lock=%v (%d paths)", c.cmd, c.lock, len(c.paths))
	case CmdDumpStorePath:
		return fmt.Sprintf("%v %s", c.cmd, c.path.Name())
	}
	return fmt.Sprintf("%v (%d paths)", c.cmd, len(c.paths))
}

// decodeSessionRequests decodes a request stream with the server-side
// readers: the client's version and its commands.
func decodeSessionRequests(data []byte) (uint64, []*sessionCmd, error) {
	br := bytes.NewReader(data)
	r := wire.NewReader(br)
	version, err := ReadClientHello(r)
	if err != nil {
		return 0, nil, err
	}
	var cmds []*sessionCmd
	for {
		off := len(data) - br.Len()
		cmd, err := ReadCommand(r)
		if err == io.EOF {
			return version, cmds, nil
		}
		if err != nil {
			return 0, nil, err
		}
		c := &sessionCmd{cmd: cmd, reqOff: off}
		switch cmd {
		case CmdQueryValidPaths:
			var q *QueryValidPathsRequest
			if q, err = ReadQueryValidPaths(r, dir); err == nil {
				c.lock, c.paths = q.Lock, q.Paths
			}
		case CmdQueryPathInfos:
			c.paths, err = ReadPathSet(r, dir)
		case CmdQueryClosure:
			c.include, c.paths, err = ReadQueryClosure(r, dir)
		case CmdDumpStorePath:
			c.path, err = ReadPath(r, dir)
		case CmdExportPaths:
			c.paths, err = ReadExportPaths(r, dir)
		default:
			err = fmt.Errorf("command %v is not expected in a recorded session", cmd)
		}
		if err != nil {
			return 0, nil, fmt.Errorf("request %d (%v) at offset %d: %w", len(cmds), cmd, off, err)
		}
		cmds = append(cmds, c)
	}
}

// sessionReply is one decoded reply: where it lies and what it says.
type sessionReply struct {
	start, end int
	paths      []storepath.Path          // QueryValidPaths, QueryClosure, ExportPaths (in stream order)
	infos      []*store.PathInfo         // QueryPathInfos
	exports    []*export.Info            // ExportPaths
	nar        []byte                    // DumpStorePath
	entries    []*nar.Header             // DumpStorePath
	narOf      map[storepath.Path][]byte // ExportPaths
}

// decodeSessionReplies decodes a reply stream with the client-side codecs,
// given the requests it answers. The hello is reply -1 and not returned;
// the replies decoded before an error are.
func decodeSessionReplies(data []byte, version uint64, cmds []*sessionCmd) ([]*sessionReply, error) {
	br := bytes.NewReader(data)
	off := func() int { return len(data) - br.Len() }
	r := wire.NewReader(br)
	sv, err := ReadServerHello(r)
	if err != nil {
		return nil, fmt.Errorf("server hello: %w", err)
	}
	if sv != Version {
		return nil, fmt.Errorf("server hello: version %#x, want %#x", sv, Version)
	}
	var out []*sessionReply
	for i, c := range cmds {
		rep := &sessionReply{start: off()}
		var err error
		switch c.cmd {
		case CmdQueryValidPaths, CmdQueryClosure:
			rep.paths, err = ReadPathSet(r, dir)
		case CmdQueryPathInfos:
			for {
				var info *store.PathInfo
				if info, err = ReadPathInfo(r, dir, version); err != nil || info == nil {
					break
				}
				rep.infos = append(rep.infos, info)
			}
		case CmdDumpStorePath:
			var buf bytes.Buffer
			nr := nar.NewReader(io.TeeReader(br, &buf))
			for {
				h, herr := nr.Next()
				if herr == io.EOF {
					break
				}
				if herr != nil {
					err = herr
					break
				}
				hc := *h
				rep.entries = append(rep.entries, &hc)
			}
			rep.nar = buf.Bytes()
		case CmdExportPaths:
			rep.narOf = map[storepath.Path][]byte{}
			er := export.NewReader(br, nil)
			for {
				if err = er.Next(); err != nil {
					if err == io.EOF {
						err = nil
					}
					break
				}
				var buf bytes.Buffer
				if _, err = io.Copy(&buf, er); err != nil {
					break
				}
				var info *export.Info
				if info, err = er.Info(); err != nil {
					break
				}
				rep.exports = append(rep.exports, info)
				rep.paths = append(rep.paths, info.Path)
				rep.narOf[info.Path] = buf.Bytes()
			}
		}
		rep.end = off()
		if err != nil {
			return out, fmt.Errorf("reply %d (%v) at offset %d: %w", i, c, rep.start, err)
		}
		out = append(out, rep)
	}
	if br.Len() != 0 {
		return out, fmt.Errorf("%d bytes after the last reply, at offset %d", br.Len(), off())
	}
	return out, nil
}

// checkSessionReplies checks that the decoded replies of Nix say what the
// store is known to hold, so that the fixtures are what the test thinks.
func checkSessionReplies(t *testing.T, roles map[string][]storepath.Path, version uint64, cmds []*sessionCmd, reps []*sessionReply) {
	t.Helper()
	missing := roles["missing"][0]
	closure := sortedSet(slices.Clone(roles["closure"]))
	valid := func(ps []storepath.Path) []storepath.Path {
		var v []storepath.Path
		for _, p := range ps {
			if !slices.Contains(roles["missing"], p) {
				v = append(v, p)
			}
		}
		return v
	}
	narHashes := map[storepath.Path]*store.PathInfo{}
	for i, c := range cmds {
		rep := reps[i]
		switch c.cmd {
		case CmdQueryValidPaths:
			if !slices.Contains(c.paths, missing) {
				t.Errorf("request %d (%v) does not ask for the missing path", i, c)
			}
			if want := valid(c.paths); !slices.Equal(rep.paths, want) {
				t.Errorf("reply %d (%v): %v, want %v", i, c, rep.paths, want)
			}
		case CmdQueryPathInfos:
			var got []storepath.Path
			for _, info := range rep.infos {
				got = append(got, info.Path)
				if Minor(version) >= 4 {
					if info.NarHash.IsZero() {
						t.Errorf("reply %d (%v): %s has no NAR hash", i, c, info.Path)
					}
				} else if !info.NarHash.IsZero() || len(info.Sigs) != 0 {
					t.Errorf("reply %d (%v): client %#x got fields of proto 2.4", i, c, version)
				}
				narHashes[info.Path] = info
			}
			if want := valid(c.paths); !slices.Equal(got, want) {
				t.Errorf("reply %d (%v): infos of %v, want %v", i, c, got, want)
			}
		case CmdQueryClosure:
			if !slices.Equal(rep.paths, closure) {
				t.Errorf("reply %d (%v): %v, want %v", i, c, rep.paths, closure)
			}
		case CmdDumpStorePath:
			checkNarInfo(t, fmt.Sprintf("reply %d (%v)", i, c), narHashes[c.path], rep.nar, version)
			types := map[string]bool{}
			for _, h := range rep.entries {
				types[h.Type.String()] = true
				if h.Executable {
					types["executable"] = true
				}
			}
			if c.path == roles["dir"][0] {
				for _, k := range []string{"directory", "regular", "executable", "symlink"} {
					if !types[k] {
						t.Errorf("reply %d (%v): no %s entry in %d entries", i, c, k, len(rep.entries))
					}
				}
			}
		case CmdExportPaths:
			if got := sortedSet(slices.Clone(rep.paths)); !slices.Equal(got, sortedSet(slices.Clone(c.paths))) {
				t.Errorf("reply %d (%v): exported %v, want %v", i, c, rep.paths, c.paths)
			}
			seen := map[storepath.Path]bool{}
			for _, info := range rep.exports {
				for _, ref := range info.References {
					if ref != info.Path && slices.Contains(c.paths, ref) && !seen[ref] {
						t.Errorf("reply %d (%v): %s comes before its reference %s", i, c, info.Path, ref)
					}
				}
				seen[info.Path] = true
				checkNarInfo(t, fmt.Sprintf("reply %d (%v) %s", i, c, info.Path.Name()), narHashes[info.Path], rep.narOf[info.Path], version)
			}
		}
	}
}

// checkNarInfo checks a NAR against the size and hash QueryPathInfos gave.
func checkNarInfo(t *testing.T, what string, info *store.PathInfo, data []byte, version uint64) {
	t.Helper()
	if info == nil {
		t.Errorf("%s: no QueryPathInfos record to check the NAR against", what)
		return
	}
	if info.NarSize != uint64(len(data)) {
		t.Errorf("%s: NAR of %d bytes, QueryPathInfos said %d", what, len(data), info.NarSize)
	}
	if Minor(version) >= 4 && !hash.Sum(hash.SHA256, data).Equal(info.NarHash) {
		t.Errorf("%s: NAR hash %v, QueryPathInfos said %v", what, hash.Sum(hash.SHA256, data), info.NarHash)
	}
}

// describeDiff says where got first differs from want: the offset, the
// reply it falls in (by Nix's reply boundaries), both decoded replies when
// they decode, and the bytes around it.
func describeDiff(got, want []byte, cmds []*sessionCmd, gotReps, wantReps []*sessionReply) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	var b strings.Builder
	fmt.Fprintf(&b, "ferry wrote %d bytes, Nix %d; first difference at offset %d (%#x)", len(got), len(want), i, i)
	k := -1
	for j, rep := range wantReps {
		if i >= rep.start && i < rep.end || i == rep.end && j == len(wantReps)-1 {
			k = j
			break
		}
	}
	switch {
	case k >= 0:
		rep := wantReps[k]
		fmt.Fprintf(&b, ", %d bytes into reply %d (%v, request at offset %d), which spans [%d,%d) in Nix's replies",
			i-rep.start, k, cmds[k], cmds[k].reqOff, rep.start, rep.end)
		fmt.Fprintf(&b, "\n  Nix:   %s", summarizeReply(cmds[k], rep))
		if k < len(gotReps) {
			fmt.Fprintf(&b, "\n  ferry: %s (spans [%d,%d))", summarizeReply(cmds[k], gotReps[k]), gotReps[k].start, gotReps[k].end)
		} else {
			b.WriteString("\n  ferry: (reply does not decode)")
		}
	case i < 16:
		b.WriteString(", in the server hello")
	}
	lo := max(0, i-16) &^ 7
	fmt.Fprintf(&b, "\n  Nix   [%d:]: % x", lo, want[lo:min(len(want), i+32)])
	fmt.Fprintf(&b, "\n  ferry [%d:]: % x", lo, got[lo:min(len(got), i+32)])
	return b.String()
}

// summarizeReply renders a decoded reply for a failure message.
func summarizeReply(c *sessionCmd, rep *sessionReply) string {
	switch c.cmd {
	case CmdQueryPathInfos:
		var ss []string
		for _, info := range rep.infos {
			ss = append(ss, fmt.Sprintf("{%s deriver=%q refs=%v narSize=%d narHash=%v ca=%q sigs=%q}",
				info.Path.Name(), info.Deriver, names(info.References), info.NarSize, info.NarHash, info.CA.String(), info.Sigs))
		}
		return "[" + strings.Join(ss, " ") + "]"
	case CmdDumpStorePath:
		var ss []string
		for _, h := range rep.entries {
			ss = append(ss, fmt.Sprintf("%q:%v", h.Path, h.Type))
		}
		return fmt.Sprintf("NAR of %d bytes, sha256 %v, entries %s", len(rep.nar), hash.Sum(hash.SHA256, rep.nar), strings.Join(ss, " "))
	case CmdExportPaths:
		var ss []string
		for _, info := range rep.exports {
			ss = append(ss, fmt.Sprintf("{%s refs=%v deriver=%q nar=%dB}", info.Path.Name(), names(info.References), info.Deriver, len(rep.narOf[info.Path])))
		}
		return "[" + strings.Join(ss, " ") + "]"
	}
	return fmt.Sprint(names(rep.paths))
}

func names(ps []storepath.Path) []string {
	var ns []string
	for _, p := range ps {
		ns = append(ns, p.Name())
	}
	return ns
}

// TestSessionGoldenDetectsChange makes sure the comparison of
// TestSessionGolden is strict: flipping any one of a few bytes of a
// recorded reply stream is reported, at the right reply.
func TestSessionGoldenDetectsChange(t *testing.T) {
	td := filepath.Join("testdata", "sessions")
	req, err := os.ReadFile(filepath.Join(td, "queries.requests"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(td, "queries.replies"))
	if err != nil {
		t.Fatal(err)
	}
	version, cmds, err := decodeSessionRequests(req)
	if err != nil {
		t.Fatal(err)
	}
	reps, err := decodeSessionReplies(want, version, cmds)
	if err != nil {
		t.Fatal(err)
	}
	for k, rep := range reps {
		got := slices.Clone(want)
		got[(rep.start+rep.end)/2] ^= 0x01
		if bytes.Equal(got, want) {
			t.Fatal("no change")
		}
		msg := describeDiff(got, want, cmds, nil, reps)
		if !strings.Contains(msg, fmt.Sprintf("reply %d (", k)) {
			t.Errorf("a change in reply %d reported as: %s", k, msg)
		}
	}
}
