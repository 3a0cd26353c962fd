// Command latencyproxy is a TCP proxy that adds a fixed round-trip time to
// every connection it forwards, for benchmarks of protocols over a slow
// link (bench/copy.sh puts it between ssh and a loopback sshd).
//
//	go run ./bench/latencyproxy -listen 127.0.0.1:0 -target 127.0.0.1:2222 -rtt 20ms
//
// It prints the address it listens on (host:port, one line on standard
// output) once it accepts connections, then forwards each accepted
// connection to -target until both directions are closed.
//
// Every chunk read in either direction is written on at its read time plus
// rtt/2, so a request and its answer take one extra rtt. The delay is a
// latency, not a bandwidth limit: each direction is a queue of timestamped
// chunks between a reader and a writer goroutine, so while one chunk waits
// out its delay the reader keeps reading and later chunks queue behind it,
// as bytes in flight on a long link do. Up to -window bytes per direction
// may be in flight (read but not yet written); beyond that the reader waits,
// which is the link's flow control. A 1 GiB transfer therefore runs at
// loopback speed plus rtt/2, not at one chunk per rtt.
//
// With -handshake (the default) the proxy waits one rtt after accepting a
// connection before it connects to the target, as a TCP handshake over the
// link would. A half-close (EOF) is passed on after the same delay as data;
// an error on either side closes both connections.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sync"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (port 0: pick a free port)")
	target := flag.String("target", "", "address to forward connections to (host:port)")
	rtt := flag.Duration("rtt", 20*time.Millisecond, "round-trip time to add (each direction gets rtt/2)")
	window := flag.Int("window", 64<<20, "bytes per direction in flight at most (read but not yet written)")
	handshake := flag.Bool("handshake", true, "wait one rtt before connecting to the target, as a TCP handshake would")
	verbose := flag.Bool("v", false, "log each connection on standard error")
	flag.Parse()
	if *target == "" || flag.NArg() != 0 || *rtt < 0 || *window < chunkSize {
		fmt.Fprintln(os.Stderr, "usage: latencyproxy -target HOST:PORT [-listen ADDR] [-rtt 20ms] [-window BYTES] [-handshake=false] [-v]")
		os.Exit(2)
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("latencyproxy: %v", err)
	}
	p := &Proxy{Target: *target, RTT: *rtt, Window: *window, Handshake: *handshake}
	if *verbose {
		p.Logf = log.Printf
	}
	fmt.Println(l.Addr().String())
	os.Stdout.Sync()
	if err := p.Serve(l); err != nil {
		log.Fatalf("latencyproxy: %v", err)
	}
}

// chunkSize is the largest read; a chunk is the unit that is timestamped.
const chunkSize = 64 << 10

// Proxy forwards connections to Target with RTT added.
type Proxy struct {
	Target    string
	RTT       time.Duration
	Window    int  // bytes in flight per direction; 0 means 64 MiB
	Handshake bool // wait RTT before dialing Target
	Logf      func(format string, args ...any)
}

// Serve accepts connections on l until it fails (e.g. is closed) and
// forwards each one in its own goroutines.
func (p *Proxy) Serve(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		go p.handle(c.(*net.TCPConn))
	}
}

func (p *Proxy) logf(format string, args ...any) {
	if p.Logf != nil {
		p.Logf(format, args...)
	}
}

func (p *Proxy) handle(client *net.TCPConn) {
	start := time.Now()
	if p.Handshake {
		time.Sleep(p.RTT)
	}
	c, err := net.Dial("tcp", p.Target)
	if err != nil {
		p.logf("dial %s: %v", p.Target, err)
		client.Close()
		return
	}
	server := c.(*net.TCPConn)
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			client.Close()
			server.Close()
		})
	}
	var wg sync.WaitGroup
	var up, down int64
	wg.Add(2)
	go func() { defer wg.Done(); up = p.pipe(server, client, closeBoth) }()
	go func() { defer wg.Done(); down = p.pipe(client, server, closeBoth) }()
	wg.Wait()
	closeBoth()
	p.logf("%s: %d bytes up, %d bytes down, %v", client.RemoteAddr(), up, down, time.Since(start).Round(time.Millisecond))
}

// chunk is one read: its bytes (nil at EOF) and when it may be written.
type chunk struct {
	buf []byte
	due time.Time
}

// pipe copies src to dst, each chunk rtt/2 after it was read, and returns
// the bytes written. At EOF on src it half-closes dst after the same delay;
// on any error it calls fail, which closes both connections.
func (p *Proxy) pipe(dst, src *net.TCPConn, fail func()) int64 {
	window := p.Window
	if window <= 0 {
		window = 64 << 20
	}
	delay := p.RTT / 2
	// The queue: at most window/chunkSize chunks in flight, and buffers are
	// recycled through free so a long transfer allocates only that many.
	n := window / chunkSize
	queue := make(chan chunk, n)
	free := make(chan []byte, n)
	go func() {
		defer close(queue)
		for {
			var buf []byte
			select {
			case buf = <-free:
			default:
				buf = make([]byte, chunkSize)
			}
			k, err := src.Read(buf[:cap(buf)])
			now := time.Now()
			if k > 0 {
				queue <- chunk{buf: buf[:k], due: now.Add(delay)}
			}
			if err != nil {
				if err == io.EOF {
					queue <- chunk{due: now.Add(delay)}
				} else {
					fail()
				}
				return
			}
		}
	}()
	var total int64
	for c := range queue {
		if d := time.Until(c.due); d > 0 {
			time.Sleep(d)
		}
		if c.buf == nil {
			dst.CloseWrite()
			continue
		}
		k, err := dst.Write(c.buf)
		total += int64(k)
		if err != nil {
			fail()
			for range queue { // let the reader finish; fail closed src
			}
			break
		}
		select {
		case free <- c.buf[:cap(c.buf)]:
		default:
		}
	}
	return total
}
