package build

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"

	"ferry/nix/derivation"
	"ferry/nix/hash"
	"ferry/nix/storepath"
	"ferry/store"
)

// TestSandboxIsolation runs builders that look around: they see only
// their input closure in the store, no host processes, and no network
// unless they are fixed-output.
func TestSandboxIsolation(t *testing.T) {
	requireSandbox(t)
	st := openStore(t)
	ctx := context.Background()
	s := testSettings()

	// An unrelated valid path the builder must not see, and an input.
	secret := makeDrv(t, st, drvSpec{name: "secret", script: `echo secret > $out`})
	res, err := Build(ctx, st, drvPathOf(t, st, secret), secret, &Options{Settings: s})
	if err != nil || res.Status != store.Built {
		t.Fatal(res, err)
	}
	input := makeDrv(t, st, drvSpec{name: "input", script: `echo input > $out`})
	inputDrv := addDrv(t, st, input)
	if res, err := Build(ctx, st, inputDrv, input, &Options{Settings: s}); err != nil || res.Status != store.Built {
		t.Fatal(res, err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	var reached int
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			reached++
			mu.Unlock()
			c.Write([]byte("hello from the host\n"))
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	probe := fmt.Sprintf(`ls /nix/store > $out; echo --- >> $out; ls /proc | grep '^[0-9]' >> $out; echo --- >> $out; (nc 127.0.0.1 %d </dev/null || echo no-network) >> $out 2>/dev/null; true`, port)

	t.Run("input-addressed", func(t *testing.T) {
		d := makeDrv(t, st, drvSpec{name: "probe", script: probe, inputs: map[storepath.Path][]string{inputDrv: {"out"}}})
		res, err := Build(ctx, st, drvPathOf(t, st, d), d, &Options{Settings: s})
		if err != nil || res.Status != store.Built {
			t.Fatal(res, err)
		}
		got, _ := os.ReadFile(st.RealPath(d.Outputs["out"].Path))
		parts := strings.Split(string(got), "---\n")
		if len(parts) != 3 {
			t.Fatalf("probe output %q", got)
		}
		// Its input and its own output, being written by ls.
		names := []string{input.Outputs["out"].Path.Base(), d.Outputs["out"].Path.Base()}
		sort.Strings(names)
		if want := strings.Join(names, "\n") + "\n"; parts[0] != want {
			t.Errorf("store listing %q, want only %q", parts[0], want)
		}
		// PID 1 (the builder) and the few processes of the probe itself.
		for _, pid := range strings.Fields(parts[1]) {
			if len(pid) > 2 {
				t.Errorf("host process %s visible in %q", pid, parts[1])
			}
		}
		if strings.TrimSpace(parts[2]) != "no-network" {
			t.Errorf("network reachable: %q", parts[2])
		}
	})

	t.Run("fixed-output", func(t *testing.T) {
		script := fmt.Sprintf(`nc 127.0.0.1 %d </dev/null > $out`, port)
		want := hash.SumString(hash.SHA256, "hello from the host\n")
		d := makeDrv(t, st, drvSpec{name: "fetch", script: script,
			fixed: &derivation.Output{Method: storepath.Flat, HashAlgo: hash.SHA256, Hash: want}})
		res, err := Build(ctx, st, drvPathOf(t, st, d), d, &Options{Settings: s})
		if err != nil || res.Status != store.Built {
			t.Fatalf("%+v %v", res, err)
		}
		info, err := st.QueryPathInfo(ctx, d.Outputs["out"].Path)
		if err != nil || info.CA.String() != "fixed:"+want.String() {
			t.Errorf("info %+v %v", info, err)
		}
	})
	mu.Lock()
	defer mu.Unlock()
	if reached != 1 {
		t.Errorf("host listener reached %d times, want once (by the fixed-output build)", reached)
	}
}

// TestConcurrentBuildsBuildOnce starts the same build many times at once:
// the builder runs once, the others wait and report AlreadyValid.
func TestConcurrentBuildsBuildOnce(t *testing.T) {
	requireSandbox(t)
	st := openStore(t)
	s := testSettings()
	// Each run says so in its log.
	d := makeDrv(t, st, drvSpec{name: "once", script: `echo running; sleep 0.5; echo done > $out`})
	dp := drvPathOf(t, st, d)
	const n = 4
	results := make([]*store.BuildResult, n)
	logs := make([]bytes.Buffer, n)
	var wg sync.WaitGroup
	for i := range results {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res, err := Build(context.Background(), st, dp, d, &Options{Settings: s, Log: &logs[i]})
			if err != nil {
				t.Error(err)
			}
			results[i] = res
		}(i)
	}
	wg.Wait()
	built := 0
	for _, r := range results {
		switch r.Status {
		case store.Built:
			built++
		case store.AlreadyValid:
		default:
			t.Errorf("status %v: %s", r.Status, r.ErrorMsg)
		}
	}
	runs := 0
	for i := range logs {
		runs += strings.Count(logs[i].String(), "running")
	}
	if built != 1 || runs != 1 {
		t.Errorf("built %d times, builder ran %d times", built, runs)
	}
}
