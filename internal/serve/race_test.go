package serve

// The copy-versus-GC race of the seed, made deterministic (issue 5).
//
// A client copying P (which refers to A and B) asks the remote which of
// {A, B, P} are valid, hears "A and B", and uploads only P. If a garbage
// collector on the remote deletes the unrooted A and B between that reply
// and the upload, the upload fails: real Nix's clients send lock=0, and
// real `nix-store --serve` only adds temp roots for lock=1.
//
// How the test pins the interleaving:
//
//   - The GC is real Nix 2.8 (`nix-store --store DST --gc`) with
//     _NIX_TEST_GC_SYNC=<fifo>. In Nix 2.8's LocalStore::collectGarbage
//     (src/libstore/gc.cc) the order is: take gc.lock exclusively; bind
//     the gc socket and start the thread that serves it; find the
//     permanent roots; read the temp roots files; then, at the sync point,
//     readFile(fifo), which blocks until a writer opens the fifo and
//     closes it; then delete. So while it is paused, the GC already knows
//     its roots, A and B are garbage to it, and its socket thread is
//     serving: a new temp root sent over the socket (what Nix's
//     addTempRoot, and ferry's, do while gc.lock is held) is still
//     honoured, and ferry's AddTempRoot cannot deadlock on it. The test
//     opens the fifo for writing (this returns once the GC has reached
//     the sync point) and releases the GC by closing it.
//   - A relay sits between sshd and the serve process: the forced command
//     is this test binary (TestMain sees FERRY_TEST_RELAY) running the
//     real server behind it. It forwards both directions byte for byte,
//     except that it holds the server's reply to the first
//     QueryValidPaths. Because a serve client sends a command only after
//     reading the previous reply, every server byte after that request
//     belongs to its reply; the relay reads the whole path set, reports
//     it to the test through a file, and forwards it only when the test
//     says so. By then the server has handled the query completely
//     (ferry's temp roots included).
//
// Sequence: GC paused → client queries → reply held → GC released and run
// to the end → reply forwarded → client uploads P.
//
// Into real `nix-store --serve --write` the GC deletes A and B and the upload
// fails ("path ... is not valid"). Into `ferry serve --write`, which temp-roots
// every path it reports valid even with lock=0 (through the GC's socket,
// since the GC holds gc.lock), A and B survive and the copy succeeds.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"ferry/internal/nixtest"
	"ferry/internal/sshtest"
	"ferry/nix/wire"
)

// relayEnv names the control directory of a relay process.
const relayEnv = "FERRY_TEST_RELAY"

// Files in the relay's control directory.
const (
	relayClaim   = "claim"   // created (O_EXCL) by the one session that holds
	relayHeld    = "held"    // the held reply's paths, one a line
	relayRelease = "release" // created by the test to let the reply through
)

// relayMain runs argv as the serve process and relays stdin and stdout to
// it, holding the reply to the first QueryValidPaths of the first session
// (see the file comment). It returns the exit status.
func relayMain(ctl string, argv []string) int {
	if len(argv) == 0 {
		fmt.Fprintln(os.Stderr, "relay: no command")
		return 2
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = os.Stderr
	toServer, err := cmd.StdinPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		return 2
	}
	fromServer, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		return 2
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		return 2
	}
	var hold atomic.Bool
	go func() {
		relayRequests(os.Stdin, toServer, &hold, ctl)
		toServer.Close()
	}()
	relayReplies(fromServer, os.Stdout, &hold, ctl)
	if err := cmd.Wait(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		return 1
	}
	return 0
}

// relayRequests copies the client's bytes to the server, parsing the
// handshake and the simple query commands until it sees the first
// QueryValidPaths; it sets hold as soon as it reads that command number,
// before any byte of the request body reaches the server.
func relayRequests(client io.Reader, server io.Writer, hold *atomic.Bool, ctl string) {
	br := bufio.NewReader(client)
	// Everything the parser reads is forwarded as it is read.
	r := wire.NewReader(io.TeeReader(br, server))
	parse := func() error {
		if _, err := r.ReadUint64(); err != nil { // magic
			return err
		}
		if _, err := r.ReadUint64(); err != nil { // version
			return err
		}
		for {
			cmd, err := r.ReadUint64()
			if err != nil {
				return err
			}
			switch Command(cmd) {
			case CmdQueryValidPaths:
				f, err := os.OpenFile(filepath.Join(ctl, relayClaim), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
				if err == nil {
					f.Close()
					hold.Store(true)
				}
				return nil
			case CmdQueryPathInfos:
				if _, err := r.ReadStrings(MaxPaths, MaxPathLen); err != nil {
					return err
				}
			case CmdQueryClosure:
				if _, err := r.ReadUint64(); err != nil {
					return err
				}
				if _, err := r.ReadStrings(MaxPaths, MaxPathLen); err != nil {
					return err
				}
			default:
				return nil
			}
		}
	}
	if parse() != nil {
		return
	}
	io.Copy(server, br)
}

// relayReplies copies the server's bytes to the client. Once hold is set,
// the next bytes after the handshake are the QueryValidPaths reply: it reads the whole path set,
// writes its paths to ctl/held and waits for ctl/release before forwarding.
func relayReplies(server io.Reader, client io.Writer, hold *atomic.Bool, ctl string) {
	br := bufio.NewReader(server)
	// The server's half of the handshake comes first: a client with a lazy
	// handshake (ferry copy) sends its query before it has read it.
	var hello [16]byte
	if _, err := io.ReadFull(br, hello[:]); err != nil {
		return
	}
	if _, err := client.Write(hello[:]); err != nil {
		return
	}
	held := false
	for {
		if _, err := br.Peek(1); err != nil {
			return
		}
		if hold.Load() && !held {
			held = true
			var reply bytes.Buffer
			r := wire.NewReader(io.TeeReader(br, &reply))
			paths, err := r.ReadStrings(MaxPaths, MaxPathLen)
			if err != nil {
				fmt.Fprintln(os.Stderr, "relay: read held reply:", err)
				return
			}
			tmp := filepath.Join(ctl, relayHeld+".tmp")
			os.WriteFile(tmp, []byte(strings.Join(paths, "\n")+"\n"), 0o644)
			os.Rename(tmp, filepath.Join(ctl, relayHeld))
			deadline := time.Now().Add(2 * time.Minute)
			for {
				if _, err := os.Stat(filepath.Join(ctl, relayRelease)); err == nil {
					break
				}
				if time.Now().After(deadline) {
					fmt.Fprintln(os.Stderr, "relay: never released")
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
			if _, err := client.Write(reply.Bytes()); err != nil {
				return
			}
			continue
		}
		buf := make([]byte, br.Buffered())
		io.ReadFull(br, buf)
		if _, err := client.Write(buf); err != nil {
			return
		}
	}
}

// waitFile waits for path to exist, or for done to be closed (a process
// that should have produced it ended), or for the timeout.
func waitFile(t *testing.T, path string, done <-chan struct{}, what string) []byte {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		if b, err := os.ReadFile(path); err == nil {
			return b
		}
		select {
		case <-done:
			if b, err := os.ReadFile(path); err == nil {
				return b
			}
			t.Fatalf("%s: the process ended first", what)
		case <-deadline:
			t.Fatalf("%s: timed out", what)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// TestRaceCopyVersusGC runs the seed's race deterministically against real
// `nix-store --serve --write` (which loses it) and `ferry serve --write`
// (which must not).
func TestRaceCopyVersusGC(t *testing.T) {
	nixtest.RequireNix(t)
	nixtest.Require(t, "ssh")
	ferry := ferryBin(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	env := nixtest.Env(t.TempDir())

	// A and B: plain files; P: a text object referring to both.
	files := t.TempDir()
	a, b := filepath.Join(files, "a"), filepath.Join(files, "b")
	os.WriteFile(a, []byte("dependency A\n"), 0o644)
	os.WriteFile(b, []byte("dependency B\n"), 0o644)
	src := filepath.Join(t.TempDir(), "src")
	refs := strings.Fields(runTool(t, env, "nix-store", "--store", src, "--add", a, b))
	pathA, pathB := refs[0], refs[1]
	p := strings.Trim(strings.TrimSpace(runTool(t, env, "nix-instantiate", "--store", src, "--read-write-mode", "--eval", "-E",
		fmt.Sprintf(`builtins.toFile "p" "uses ${builtins.storePath %q} and ${builtins.storePath %q}"`, pathA, pathB))), `"`)

	nixServe := []string{"nix-store", "--serve", "--write", "--store"}
	ferryServe := []string{ferry, "serve", "--write", "--store"}
	nixCopy := func(uri string) []string {
		return []string{"nix", "copy", "--no-check-sigs", "--from", src, "--to", uri, p}
	}
	// ferry copy asks with lock=1 over the whole closure in the query the
	// relay holds, so even stock nix-store --serve roots A and B first.
	ferryCopy := func(uri string) []string {
		return []string{ferry, "copy", "--store", src, "--to", uri, p}
	}
	for _, tc := range []struct {
		name    string
		server  []string // argv behind the relay; DST is appended
		client  func(uri string) []string
		wantErr bool
	}{
		{"nix copy into nix-store --serve", nixServe, nixCopy, true},
		{"nix copy into ferry serve", ferryServe, nixCopy, false},
		{"ferry copy into nix-store --serve", nixServe, ferryCopy, false},
		{"ferry copy into ferry serve", ferryServe, ferryCopy, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "dst")
			// The remote holds A and B, unrooted (nix-store --add roots nothing).
			runTool(t, env, "nix-store", "--store", dst, "--add", a, b)
			ctl := t.TempDir()

			// Start the GC and wait for it to pause after finding its roots.
			fifo := filepath.Join(ctl, "gc-sync")
			if err := syscall.Mkfifo(fifo, 0o600); err != nil {
				t.Fatal(err)
			}
			// --debug makes the GC log each temp root its socket receives.
			gc := exec.Command("nix-store", "--store", dst, "--gc", "--debug")
			gc.Env = append(append([]string{}, env...), "_NIX_TEST_GC_SYNC="+fifo)
			var gcOut bytes.Buffer
			gc.Stdout, gc.Stderr = &gcOut, &gcOut
			if err := gc.Start(); err != nil {
				t.Fatal(err)
			}
			gcDone := make(chan error, 1)
			go func() { gcDone <- gc.Wait() }()
			t.Cleanup(func() { gc.Process.Kill() })
			opened := make(chan *os.File, 1)
			go func() {
				f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
				if err == nil {
					opened <- f
				}
			}()
			var gcSync *os.File
			select {
			case gcSync = <-opened:
			case err := <-gcDone:
				t.Fatalf("nix-store --gc ended before its sync point: %v\n%s", err, gcOut.String())
			case <-time.After(30 * time.Second):
				t.Fatalf("nix-store --gc never reached its sync point\n%s", gcOut.String())
			}

			// The client, through sshd and the relay.
			relayed := append(append([]string{self}, tc.server...), dst)
			s := sshtest.Start(t, &sshtest.Options{
				ForcedCommand: strings.Join(relayed, " "),
				Env:           []string{relayEnv + "=" + ctl},
			})
			argv := tc.client(s.URI())
			cp := exec.Command(argv[0], argv[1:]...)
			cp.Env = append(append([]string{}, env...), s.Env()...)
			var cpOut bytes.Buffer
			cp.Stdout, cp.Stderr = &cpOut, &cpOut
			if err := cp.Start(); err != nil {
				t.Fatal(err)
			}
			cpDone := make(chan struct{})
			var cpErr error
			go func() { cpErr = cp.Wait(); close(cpDone) }()
			t.Cleanup(func() { cp.Process.Kill(); <-cpDone })

			// The server has answered the query; the client has not heard it.
			held := string(waitFile(t, filepath.Join(ctl, relayHeld), cpDone, "wait for the held QueryValidPaths reply"))
			if want := pathA + "\n" + pathB + "\n"; held != want && held != pathB+"\n"+pathA+"\n" {
				t.Fatalf("held reply %q, want A and B valid", held)
			}

			// Release the GC and let it finish.
			gcSync.Close()
			select {
			case err := <-gcDone:
				if err != nil {
					t.Fatalf("nix-store --gc: %v\n%s", err, gcOut.String())
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("nix-store --gc did not finish\n%s", gcOut.String())
			}
			_, errA := os.Stat(filepath.Join(dst, pathA))
			_, errB := os.Stat(filepath.Join(dst, pathB))
			var gcLog []string
			for _, l := range strings.Split(gcOut.String(), "\n") {
				if strings.Contains(l, "GC root") || strings.Contains(l, "deleting '") || strings.Contains(l, "store paths deleted") {
					gcLog = append(gcLog, l)
				}
			}
			t.Logf("GC log (roots received over its socket, deletions):\n%s", strings.Join(gcLog, "\n"))

			// Now let the client hear the reply and upload P.
			os.WriteFile(filepath.Join(ctl, relayRelease), nil, 0o644)
			select {
			case <-cpDone:
			case <-time.After(30 * time.Second):
				t.Fatalf("the copy did not finish\n%s", cpOut.String())
			}
			if tc.wantErr {
				// The race as Nix loses it: the GC took A and B.
				if errA == nil || errB == nil {
					t.Fatalf("the GC kept A or B (%v, %v): no race to lose\n%s", errA, errB, gcOut.String())
				}
				if cpErr == nil {
					t.Fatalf("nix copy into nix-store --serve succeeded; want it to lose the race\n%s", cpOut.String())
				}
				if !strings.Contains(cpOut.String(), "is not valid") {
					t.Errorf("nix copy failed, but not with \"is not valid\":\n%s", cpOut.String())
				}
				t.Logf("nix copy into nix-store --serve, as expected: %v\n%s", cpErr, cpOut.String())
				return
			}
			// ferry's temp roots reached the paused GC through its socket.
			for _, q := range []string{pathA, pathB} {
				if !strings.Contains(gcOut.String(), "got new GC root '"+q+"'") {
					t.Errorf("the GC never received a temp root for %s over its socket", q)
				}
			}
			if errA != nil || errB != nil {
				t.Errorf("the GC deleted paths ferry reported valid: %v, %v\n%s", errA, errB, gcOut.String())
			}
			if cpErr != nil {
				t.Fatalf("%s: %v\n%s", tc.name, cpErr, cpOut.String())
			}
			runTool(t, env, "nix-store", "--store", dst, "--check-validity", pathA, pathB, p)
			verifyStore(t, env, dst)
		})
	}
}
