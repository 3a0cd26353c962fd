package buildhook

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"ferry/internal/hookapi"
	"ferry/internal/machines"
	"ferry/internal/settings"
	"ferry/nix/wire"
	"ferry/store"
)

func encode(t testing.TB, f func(w *wire.Writer) error) []byte {
	t.Helper()
	var b bytes.Buffer
	w := wire.NewWriter(&b)
	if err := f(w); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func reader(b []byte) *wire.Reader { return wire.NewReader(bufio.NewReader(bytes.NewReader(b))) }

func TestSettingsRecords(t *testing.T) {
	recs := []Setting{{"builders", "ssh://a x86_64-linux"}, {"store", "/tmp/s"}, {"empty", ""}}
	data := encode(t, func(w *wire.Writer) error { return WriteSettings(w, recs) })
	// Nix's own bytes for one record: u64 1, "builders" (8 bytes, no
	// padding), the value padded to 24 bytes.
	if !bytes.HasPrefix(data, append([]byte{1, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0}, "builders"...)) {
		t.Fatalf("encoding starts % x", data[:24])
	}
	got, err := ReadSettings(reader(data))
	if err != nil || !reflect.DeepEqual(got, recs) {
		t.Fatalf("ReadSettings = %v, %v; want %v", got, err, recs)
	}

	// Any non-zero flag below 2^32 announces a record (readInt).
	two := append([]byte{2, 0, 0, 0, 0, 0, 0, 0}, data[8:]...)
	if got, err := ReadSettings(reader(two)); err != nil || len(got) != 3 {
		t.Errorf("flag 2: %v, %v", got, err)
	}
	big := append([]byte{0, 0, 0, 0, 1, 0, 0, 0}, data[8:]...)
	var re *wire.RangeError
	if _, err := ReadSettings(reader(big)); !errors.As(err, &re) {
		t.Errorf("flag 2^32: %v, want a RangeError", err)
	}
	// A stream that ends before the terminating 0 is an error, at every
	// cut.
	for n := 0; n < len(data)-1; n++ {
		if _, err := ReadSettings(reader(data[:n])); err == nil {
			t.Fatalf("a stream cut at %d of %d was read", n, len(data))
		}
	}
	nonZeroPad := append([]byte(nil), data...)
	nonZeroPad[16+8+8+len("ssh://a x86_64-linux")] = 'x'
	if _, err := ReadSettings(reader(nonZeroPad)); !errors.Is(err, wire.ErrPadding) {
		t.Errorf("non-zero padding: %v", err)
	}
}

func TestTry(t *testing.T) {
	in := &Try{AmWilling: true, System: "x86_64-linux", DrvPath: "/nix/store/vcrb3f86n0fj8v0dlkdmdhhimfcgzl3d-hello-dump.drv", Features: []string{"kvm", "big", "kvm"}}
	data := encode(t, func(w *wire.Writer) error { return WriteTry(w, in) })
	// The bytes Nix 2.8 sent in a recorded session (a wrapper hook that
	// saved its stdin), for the same request with features {foo}.
	recorded := []byte("\x03\x00\x00\x00\x00\x00\x00\x00try\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00x86_64-linux\x00\x00\x00\x00:\x00\x00\x00\x00\x00\x00\x00/nix/store/vcrb3f86n0fj8v0dlkdmdhhimfcgzl3d-hello-dump.drv\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00foo\x00\x00\x00\x00\x00")
	got, err := ReadTry(reader(recorded))
	if err != nil {
		t.Fatal(err)
	}
	want := &Try{AmWilling: true, System: "x86_64-linux", DrvPath: in.DrvPath, Features: []string{"foo"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("recorded try: %+v, want %+v", got, want)
	}
	if re := encode(t, func(w *wire.Writer) error { return WriteTry(w, want) }); !bytes.Equal(re, recorded) {
		t.Errorf("WriteTry differs from Nix's bytes:\n% x\n% x", re, recorded)
	}

	got, err = ReadTry(reader(data))
	if err != nil {
		t.Fatal(err)
	}
	if got.Features == nil || !reflect.DeepEqual(got.Features, []string{"big", "kvm"}) || !got.AmWilling {
		t.Errorf("features as a set: %+v", got)
	}

	// The end: no more input, or another word (build-remote returns).
	for name, b := range map[string][]byte{
		"eof":        nil,
		"other word": encode(t, func(w *wire.Writer) error { return w.WriteString("exit") }),
	} {
		if _, err := ReadTry(reader(b)); err != ErrEnd {
			t.Errorf("%s: %v, want ErrEnd", name, err)
		}
	}
	// Cut after "try": an error, not the end.
	for n := 16; n < len(data); n++ {
		if _, err := ReadTry(reader(data[:n])); err == nil || err == ErrEnd {
			t.Fatalf("a try cut at %d: %v", n, err)
		}
	}
}

func TestAccepted(t *testing.T) {
	in := &Accepted{Inputs: []string{"/nix/store/b", "/nix/store/a", "/nix/store/a"}, WantedOutputs: []string{"out", "doc"}}
	data := encode(t, func(w *wire.Writer) error { return WriteAccepted(w, in) })
	got, err := ReadAccepted(reader(data))
	if err != nil {
		t.Fatal(err)
	}
	want := &Accepted{Inputs: []string{"/nix/store/a", "/nix/store/b"}, WantedOutputs: []string{"doc", "out"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	empty := encode(t, func(w *wire.Writer) error { return WriteAccepted(w, &Accepted{}) })
	if len(empty) != 16 {
		t.Errorf("empty sets are %d bytes", len(empty))
	}
	if _, err := ReadAccepted(reader(data[:len(data)-1])); err == nil {
		t.Error("a cut list was read")
	}
}

func TestReplies(t *testing.T) {
	var b bytes.Buffer
	for _, r := range []struct {
		d hookapi.Decision
		m string
	}{{hookapi.Decline, ""}, {hookapi.Postpone, ""}, {hookapi.Accept, "ssh://b?remote-store=/x"}, {hookapi.DeclinePermanently, ""}} {
		if err := WriteReply(&b, r.d, r.m); err != nil {
			t.Fatal(err)
		}
	}
	want := "# decline\n# postpone\n# accept\nssh://b?remote-store=/x\n# decline-permanently\n"
	if b.String() != want {
		t.Errorf("replies %q, want %q", b.String(), want)
	}
	if WriteReply(io.Discard, hookapi.Accept, "") == nil || WriteReply(io.Discard, hookapi.Accept, "a\nb") == nil || WriteReply(io.Discard, "maybe", "") == nil {
		t.Error("a bad reply was written")
	}

	// What Nix reads: messages, then the word.
	br := bufio.NewReader(strings.NewReader("@nix {\"action\":\"msg\"}\nplain text\n# accept\nssh://m\n# bogus\n# accept\n"))
	d, m, other, err := ReadReply(br)
	if err != nil || d != hookapi.Accept || m != "ssh://m" || len(other) != 2 {
		t.Errorf("ReadReply = %q %q %q %v", d, m, other, err)
	}
	if _, _, _, err := ReadReply(br); err == nil || !strings.Contains(err.Error(), "bad hook reply 'bogus'") {
		t.Errorf("bogus reply: %v", err)
	}
	if _, _, _, err := ReadReply(br); err == nil {
		t.Error("an accept without a machine line was read")
	}
}

// The warning build-remote prints, recorded from Nix 2.8 (nix-build -j0
// with one machine lacking the feature "foo"), byte for byte as the JSON
// logger wrote it.
func TestNoMachineMessageIsNixs(t *testing.T) {
	const recorded = `@nix {"action":"msg","level":1,"msg":"Failed to find a machine for remote build!\nderivation: \u001b[35;1mvcrb3f86n0fj8v0dlkdmdhhimfcgzl3d-hello-dump.drv\u001b[0m\nrequired (system, features): (\u001b[35;1mx86_64-linux\u001b[0m, \u001b[35;1mfoo\u001b[0m)\n\u001b[35;1m1\u001b[0m available machines:\n(systems, maxjobs, supportedFeatures, mandatoryFeatures)\n(\u001b[35;1mx86_64-linux\u001b[0m, \u001b[35;1m2\u001b[0m, \u001b[35;1mbar\u001b[0m, \u001b[35;1m\u001b[0m)"}` + "\n"
	ms, err := machines.Parse("ssh://nowhere.invalid x86_64-linux - 2 1 bar", "x86_64-linux")
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	newLogger(&b, LvlInfo).msg(LvlWarn, NoMachineMessage("vcrb3f86n0fj8v0dlkdmdhhimfcgzl3d-hello-dump.drv", "x86_64-linux", []string{"foo"}, ms))
	if b.String() != recorded {
		t.Errorf("got  %s\nwant %s", b.String(), recorded)
	}
	// Above the verbosity, nothing (printMsg).
	b.Reset()
	newLogger(&b, LvlInfo).msg(LvlChatty, "x")
	if b.Len() != 0 {
		t.Errorf("a chatty message at verbosity 3: %q", b.String())
	}
	// An error as logEI writes it, keys sorted.
	b.Reset()
	newLogger(&b, 0).errorInfo("build of 'x' failed")
	if want := `@nix {"action":"msg","column":null,"file":null,"level":0,"line":null,"msg":"\u001b[31;1merror:\u001b[0m build of 'x' failed","raw_msg":"build of 'x' failed"}` + "\n"; b.String() != want {
		t.Errorf("error: %s", b.String())
	}
}

func TestNewConfig(t *testing.T) {
	base := settings.Default()
	base.MaxJobs = 8
	var warnings []string
	c := NewConfig(base, []Setting{
		{"store", "/tmp/client"}, {"builders", "ssh://a"}, {"max-build-log-size", "4096"}, {"timeout", "7"},
		{"max-silent-time", "3"}, {"connect-timeout", "5"}, {"max-jobs", "0"}, {"system", "aarch64-linux"},
		{"extra-platforms", "armv7l-linux"}, {"system-features", "kvm big"}, {"repeat", "2"},
		{"enforce-determinism", "false"}, {"keep-failed", "true"}, {"cores", "many"}, {"some-new-setting", "x"},
	}, func(m string) { warnings = append(warnings, m) })
	s := c.Settings
	if c.Store != "/tmp/client" || s.Builders != "ssh://a" || s.MaxLogSize != 4096 || s.Timeout != 7*time.Second ||
		s.MaxSilentTime != 3*time.Second || c.ConnectTimeout != 5*time.Second || s.MaxJobs != 1 || s.System != "aarch64-linux" ||
		!reflect.DeepEqual(s.ExtraPlatforms, []string{"armv7l-linux"}) || !reflect.DeepEqual(s.SystemFeatures, []string{"kvm", "big"}) {
		t.Errorf("config %+v, settings %+v", c, s)
	}
	if base.MaxJobs != 8 || base.System == "aarch64-linux" {
		t.Error("NewConfig changed its base")
	}
	if bs := c.BuildSettings(); *bs != (store.BuildSettings{MaxSilentTime: 3 * time.Second, Timeout: 7 * time.Second, MaxLogSize: 4096, BuildRepeat: 2, KeepFailed: true}) {
		t.Errorf("build settings %+v", bs)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "'cores' = 'many'") {
		t.Errorf("warnings %q", warnings)
	}
	if ts := c.travellingSettings(); ts["max-build-log-size"] != "4096" || ts["timeout"] != "7" || ts["store"] != "" {
		t.Errorf("travelling settings %v", ts)
	}
}

// fakeScheduler answers tries from a script and records what it was asked.
type fakeScheduler struct {
	replies  []*hookapi.TryReply
	tries    []*hookapi.TryRequest
	build    *hookapi.BuildRequest
	result   *hookapi.BuildReply
	released int
}

func (f *fakeScheduler) Try(ctx context.Context, req *hookapi.TryRequest) (*hookapi.TryReply, error) {
	f.tries = append(f.tries, req)
	r := f.replies[0]
	f.replies = f.replies[1:]
	return r, nil
}

func (f *fakeScheduler) Build(ctx context.Context, req *hookapi.BuildRequest, log io.Writer) (*hookapi.BuildReply, error) {
	f.build = req
	io.WriteString(log, "the build log\n")
	return f.result, nil
}

func (f *fakeScheduler) Release() error { f.released++; return nil }

// runHook runs Run on the session stdin with a fake scheduler and a
// client store in a temporary directory.
func runHook(t *testing.T, stdin []byte, f *fakeScheduler) (code int, stderr, log string) {
	t.Helper()
	var e, l bytes.Buffer
	code = Run(context.Background(), &Options{
		Stdin: bytes.NewReader(stdin), Stderr: &e, Log: &l, Verbosity: LvlInfo,
		Settings: func() (*settings.Settings, error) { return settings.Default(), nil },
		Connect: func(ctx context.Context, stateDir string) (hookapi.Scheduler, error) {
			if f == nil {
				return nil, ErrNoScheduler
			}
			return f, nil
		},
	})
	return code, e.String(), l.String()
}

func session(t *testing.T, builders, storeDir string, tries []*Try, acc *Accepted) []byte {
	return encode(t, func(w *wire.Writer) error {
		WriteSettings(w, []Setting{{"builders", builders}, {"store", storeDir}, {"system", "x86_64-linux"}, {"system-features", ""}})
		for _, tr := range tries {
			WriteTry(w, tr)
		}
		if acc != nil {
			WriteAccepted(w, acc)
		}
		return nil
	})
}

const drvA = "/nix/store/vcrb3f86n0fj8v0dlkdmdhhimfcgzl3d-hello-dump.drv"

func TestRunSession(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "client")
	t.Run("no machines", func(t *testing.T) {
		// decline-permanently before any try is read, as build-remote.
		code, stderr, _ := runHook(t, session(t, "", dir, nil, nil), &fakeScheduler{})
		if code != 0 || stderr != "# decline-permanently\n" {
			t.Errorf("exit %d, stderr %q", code, stderr)
		}
	})
	t.Run("decline, postpone, accept", func(t *testing.T) {
		f := &fakeScheduler{
			replies: []*hookapi.TryReply{{Decision: hookapi.Decline, Message: "no machine"}, {Decision: hookapi.Postpone}, {Decision: hookapi.Accept, Machine: "ssh://m"}},
			result:  &hookapi.BuildReply{Success: true},
		}
		tries := []*Try{{AmWilling: true, System: "x86_64-linux", DrvPath: drvA}, {System: "x86_64-linux", DrvPath: drvA}, {System: "x86_64-linux", DrvPath: drvA, Features: []string{"kvm"}}}
		acc := &Accepted{Inputs: []string{"/nix/store/sp0bjdd522v0s58a7wpc50c1asnbnz9j-hook-a"}, WantedOutputs: []string{"out"}}
		code, stderr, log := runHook(t, session(t, "ssh://m", dir, tries, acc), f)
		// The decline's message is chatty (the local machine could build
		// it), so not shown at verbosity 3.
		if code != 0 || stderr != "# decline\n# postpone\n# accept\nssh://m\n" || log != "the build log\n" {
			t.Errorf("exit %d, stderr %q, log %q", code, stderr, log)
		}
		if len(f.tries) != 3 || f.tries[0].Store != dir || f.tries[0].Builders != "ssh://m" || !f.tries[0].AmWilling || f.tries[1].AmWilling ||
			!reflect.DeepEqual(f.tries[2].Features, []string{"kvm"}) || string(f.tries[2].DrvPath) != drvA {
			t.Errorf("tries %+v", f.tries)
		}
		if f.build == nil || string(f.build.DrvPath) != drvA || len(f.build.Inputs) != 1 || !reflect.DeepEqual(f.build.WantedOutputs, []string{"out"}) {
			t.Errorf("build %+v", f.build)
		}
		if f.released == 0 {
			t.Error("the scheduler was not released")
		}
	})
	t.Run("a decline that leaves nowhere to build warns", func(t *testing.T) {
		f := &fakeScheduler{replies: []*hookapi.TryReply{{Decision: hookapi.Decline, Message: "Failed to find a machine"}}}
		code, stderr, _ := runHook(t, session(t, "ssh://m", dir, []*Try{{System: "x86_64-linux", DrvPath: drvA}}, nil), f)
		if code != 0 || stderr != `@nix {"action":"msg","level":1,"msg":"Failed to find a machine"}`+"\n# decline\n" {
			t.Errorf("exit %d, stderr %q", code, stderr)
		}
	})
	t.Run("failure", func(t *testing.T) {
		f := &fakeScheduler{replies: []*hookapi.TryReply{{Decision: hookapi.Accept, Machine: "ssh://m"}},
			result: &hookapi.BuildReply{Message: "build of '" + drvA + "' on 'ssh://m' failed: boom"}}
		code, stderr, _ := runHook(t, session(t, "ssh://m", dir, []*Try{{System: "x86_64-linux", DrvPath: drvA}}, &Accepted{}), f)
		if code != 1 || !strings.HasPrefix(stderr, "# accept\nssh://m\n@nix {") || !strings.Contains(stderr, `"raw_msg":"build of '`+drvA+`' on 'ssh://m' failed: boom"`) {
			t.Errorf("exit %d, stderr %q", code, stderr)
		}
	})
	t.Run("a path outside the store", func(t *testing.T) {
		f := &fakeScheduler{}
		code, stderr, _ := runHook(t, session(t, "ssh://m", dir, []*Try{{System: "x86_64-linux", DrvPath: "/tmp/x.drv"}}, nil), f)
		if code != 1 || len(f.tries) != 0 || !strings.Contains(stderr, `"level":0`) {
			t.Errorf("exit %d, stderr %q", code, stderr)
		}
	})
	t.Run("in-process, no machine fits", func(t *testing.T) {
		// No scheduler: Local declines with Nix's table, a warning when
		// Nix is not willing to build it either.
		code, stderr, _ := runHook(t, session(t, "ssh://m aarch64-linux", dir, []*Try{{System: "x86_64-linux", DrvPath: drvA}}, nil), nil)
		if code != 0 || !strings.Contains(stderr, `"level":1,"msg":"Failed to find a machine for remote build!`) || !strings.HasSuffix(stderr, "\n# decline\n") {
			t.Errorf("exit %d, stderr %q", code, stderr)
		}
	})
}

func TestCanBuildLocally(t *testing.T) {
	s := settings.Default()
	s.System, s.ExtraPlatforms = "x86_64-linux", []string{"i686-linux"}
	for _, c := range []struct {
		req  hookapi.TryRequest
		want bool
	}{
		{hookapi.TryRequest{AmWilling: true, System: "x86_64-linux"}, true},
		{hookapi.TryRequest{AmWilling: true, System: "i686-linux", Features: []string{"kvm"}}, true},
		{hookapi.TryRequest{AmWilling: false, System: "x86_64-linux"}, false},
		{hookapi.TryRequest{AmWilling: true, System: "aarch64-linux"}, false},
		{hookapi.TryRequest{AmWilling: true, System: "x86_64-linux", Features: []string{"big"}}, false},
	} {
		if got := CanBuildLocally(s, []string{"kvm"}, &c.req); got != c.want {
			t.Errorf("%+v: %v", c.req, got)
		}
	}
}

// FuzzDecode feeds arbitrary bytes to the decoder of a whole session:
// it must not panic, must bound what it allocates, and what it decodes
// must encode back to bytes that decode to the same.
func FuzzDecode(f *testing.F) {
	f.Add(encode(f, func(w *wire.Writer) error {
		WriteSettings(w, []Setting{{"builders", "ssh://a x86_64-linux"}, {"store", "/tmp/s"}})
		WriteTry(w, &Try{AmWilling: true, System: "x86_64-linux", DrvPath: drvA, Features: []string{"kvm"}})
		return WriteAccepted(w, &Accepted{Inputs: []string{"/nix/store/a"}, WantedOutputs: []string{"out"}})
	}))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := reader(data)
		recs, err := ReadSettings(r)
		if err != nil {
			return
		}
		// One try, and what follows an accept.
		var tries []*Try
		accErr := errors.New("no try")
		var acc *Accepted
		if tr, err := ReadTry(r); err == nil {
			tries = append(tries, tr)
			acc, accErr = ReadAccepted(r)
		}
		re := encode(t, func(w *wire.Writer) error {
			WriteSettings(w, recs)
			for _, tr := range tries {
				WriteTry(w, tr)
			}
			if accErr == nil {
				WriteAccepted(w, acc)
			}
			return nil
		})
		r2 := reader(re)
		recs2, err := ReadSettings(r2)
		if err != nil || !reflect.DeepEqual(recs, recs2) && !(len(recs) == 0 && len(recs2) == 0) {
			t.Fatalf("settings %v re-read as %v, %v", recs, recs2, err)
		}
		for _, tr := range tries {
			tr2, err := ReadTry(r2)
			if err != nil || !reflect.DeepEqual(tr, tr2) {
				t.Fatalf("try %+v re-read as %+v, %v", tr, tr2, err)
			}
		}
		if accErr == nil {
			acc2, err := ReadAccepted(r2)
			if err != nil || !reflect.DeepEqual(acc, acc2) {
				t.Fatalf("accepted %+v re-read as %+v, %v", acc, acc2, err)
			}
		}
	})
}
