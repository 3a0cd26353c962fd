package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"testing"
	"time"
)

const testRTT = 20 * time.Millisecond

// start runs a Proxy in front of target and returns its address.
func start(t testing.TB, target string, handshake bool) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	p := &Proxy{Target: target, RTT: testRTT, Handshake: handshake}
	go p.Serve(l)
	return l.Addr().String()
}

// listen starts a TCP server that runs serve on each connection.
func listen(t testing.TB, serve func(net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); serve(c) }()
		}
	}()
	return l.Addr().String()
}

// TestPingPong: each one-byte request and reply takes at least one RTT,
// and (the fastest of several) not much more: not one RTT per direction.
func TestPingPong(t *testing.T) {
	echo := listen(t, func(c net.Conn) { io.Copy(c, c) })
	c, err := net.Dial("tcp", start(t, echo, false))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	var best time.Duration
	b := []byte{0}
	for i := 0; i < 10; i++ {
		t0 := time.Now()
		b[0] = byte(i)
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		d := time.Since(t0)
		if b[0] != byte(i) {
			t.Fatalf("ping %d: got %d back", i, b[0])
		}
		if d < testRTT {
			t.Errorf("ping %d took %v, less than the rtt %v", i, d, testRTT)
		}
		if i == 0 || d < best {
			best = d
		}
	}
	// Twice the rtt would mean the delay is applied twice per direction.
	if best >= testRTT*3/2 {
		t.Errorf("fastest of 10 pings took %v, want about %v", best, testRTT)
	}
	t.Logf("fastest ping %v (rtt %v)", best, testRTT)
}

// TestHandshake: with Handshake the first reply takes a further RTT (the
// server's greeting reaches the client 1.5 RTT after the connect).
func TestHandshake(t *testing.T) {
	greet := listen(t, func(c net.Conn) { c.Write([]byte("hello\n")) })
	t0 := time.Now()
	c, err := net.Dial("tcp", start(t, greet, true))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	d := time.Since(t0)
	if string(b) != "hello\n" {
		t.Fatalf("got %q", b)
	}
	if d < testRTT*3/2 {
		t.Errorf("greeting after %v, want at least %v", d, testRTT*3/2)
	}
}

// TestBulk: 64 MiB each way go through intact and in far less time than
// one chunk per RTT would allow (1,024 chunks of 64 KiB: over 10 s one way).
// The sender half-closes; the EOF must reach the receiver.
func TestBulk(t *testing.T) {
	const size = 64 << 20
	data := make([]byte, size)
	rand.Read(data)
	want := sha256.Sum256(data)
	// The server sends data back while reading the client's copy.
	got := make(chan []byte, 1)
	srv := listen(t, func(c net.Conn) {
		sent := make(chan struct{})
		go func() { c.Write(data); c.(*net.TCPConn).CloseWrite(); close(sent) }()
		h := sha256.New()
		io.Copy(h, c)
		got <- h.Sum(nil)
		<-sent
	})
	c, err := net.Dial("tcp", start(t, srv, false))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	t0 := time.Now()
	go func() { c.Write(data); c.(*net.TCPConn).CloseWrite() }()
	h := sha256.New()
	n, err := io.Copy(h, c)
	d := time.Since(t0)
	if err != nil {
		t.Fatal(err)
	}
	if n != size || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("client received %d bytes, not the %d sent (or different ones)", n, size)
	}
	if !bytes.Equal(<-got, want[:]) {
		t.Fatalf("server received different bytes from those sent")
	}
	serialised := time.Duration(size/chunkSize) * testRTT / 2
	if d < testRTT/2 {
		t.Errorf("64 MiB took %v, less than the one-way delay %v", d, testRTT/2)
	}
	if d > serialised/4 {
		t.Errorf("64 MiB took %v: throughput is limited by the delay (one chunk per rtt/2 would take %v)", d, serialised)
	}
	t.Logf("64 MiB each way in %v (%.0f MB/s); one chunk per rtt/2 would take %v", d, size/d.Seconds()/1e6, serialised)
}

// BenchmarkOneWay measures one direction's throughput through the proxy
// (256 MiB per op), to compare with plain loopback (BenchmarkDirect).
func BenchmarkOneWay(b *testing.B) { benchOneWay(b, true) }

func BenchmarkDirect(b *testing.B) { benchOneWay(b, false) }

func benchOneWay(b *testing.B, proxied bool) {
	const size = 256 << 20
	data := make([]byte, 1<<20)
	addr := listen(b, func(c net.Conn) {
		for i := 0; i < size/len(data); i++ {
			if _, err := c.Write(data); err != nil {
				return
			}
		}
	})
	if proxied {
		addr = start(b, addr, false)
	}
	b.SetBytes(size)
	for i := 0; i < b.N; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		if n != size {
			b.Fatalf("got %d bytes", n)
		}
	}
}
