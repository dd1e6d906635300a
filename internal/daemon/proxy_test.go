package daemon_test

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/slipstream-sync/slipstream/internal/testutil"
)

// faultProxy is a TCP proxy on 127.0.0.1 that the fault tests put between
// two instances. It forwards every accepted connection to target and can
// cut, stall and delay the traffic:
//
//   - Cut closes every current connection (with a reset) and closes every
//     new one at once, until Heal.
//   - Stall turns the proxy into a black hole until Unstall: connections
//     stay open, but no byte is read or forwarded in either direction, and
//     the target is not even dialled for connections accepted meanwhile. No
//     FIN and no RST pass either: only a heartbeat can tell. Unstall
//     forwards what was held, in order.
//   - SetDelay(d) delays every chunk by d in each direction (latency, not a
//     bandwidth limit: chunks are queued, at most proxyPipeDepth per direction).
//
// Memory is bounded (proxyPipeDepth chunks of proxyChunkSize per direction), every
// wait is bounded by the connection's or the proxy's end, and Close (run on
// test cleanup) closes everything and waits for every goroutine.
type faultProxy struct {
	t      *testing.T
	target string
	ln     net.Listener

	mu       sync.Mutex
	conns    map[*proxyConn]struct{}
	cut      bool
	stalled  bool
	flowing  chan struct{} // closed while not stalled
	delay    time.Duration
	closed   bool
	accepted int // connections accepted
	refused  int // connections closed at once because the proxy was cut

	wg        sync.WaitGroup
	closeOnce sync.Once
}

const (
	proxyChunkSize = 32 << 10
	proxyPipeDepth = 16
)

// proxyConn is one proxied connection: client is the accepted side, server
// the dialled one (nil until dialled).
type proxyConn struct {
	client net.Conn
	mu     sync.Mutex
	server net.Conn
	done   chan struct{}
	once   sync.Once
}

// close closes both sides (with a reset when abort) and ends every wait of
// the connection's goroutines.
func (pc *proxyConn) close(abort bool) {
	pc.once.Do(func() {
		pc.mu.Lock()
		defer pc.mu.Unlock()
		close(pc.done)
		for _, c := range []net.Conn{pc.client, pc.server} {
			if c == nil {
				continue
			}
			if tc, ok := c.(*net.TCPConn); ok && abort {
				_ = tc.SetLinger(0)
			}
			_ = c.Close()
		}
	})
}

// setServer records the dialled side; false (having closed it) when the
// connection was closed meanwhile.
func (pc *proxyConn) setServer(c net.Conn) bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	select {
	case <-pc.done:
		_ = c.Close()
		return false
	default:
		pc.server = c
		return true
	}
}

// newFaultProxy listens on 127.0.0.1:0 and forwards to target until the
// test ends.
func newFaultProxy(t *testing.T, target string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{t: t, target: target, ln: ln, conns: map[*proxyConn]struct{}{}, flowing: make(chan struct{})}
	close(p.flowing)
	p.wg.Add(1)
	go p.acceptLoop()
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port.
func (p *faultProxy) Addr() string { return p.ln.Addr().String() }

// Cut closes every current connection with a reset and refuses new ones
// (accepted, then reset at once) until Heal.
func (p *faultProxy) Cut() {
	p.mu.Lock()
	p.cut = true
	conns := p.snapshot()
	p.mu.Unlock()
	for _, pc := range conns {
		pc.close(true)
	}
}

// Heal lets new connections through again after Cut.
func (p *faultProxy) Heal() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// Stall stops every byte in both directions, on current and new
// connections, until Unstall. Nothing is closed.
func (p *faultProxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.stalled {
		p.stalled = true
		p.flowing = make(chan struct{})
	}
}

// Unstall lets the held bytes and everything after them through.
func (p *faultProxy) Unstall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stalled {
		p.stalled = false
		close(p.flowing)
	}
}

// SetDelay delays every chunk read from now on by d (0: no delay).
func (p *faultProxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// Stats returns how many connections were accepted, how many were refused
// because of a Cut, and how many are open now.
func (p *faultProxy) Stats() (accepted, refused, open int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted, p.refused, len(p.conns)
}

// Close stops listening, closes every connection and waits for every
// goroutine of the proxy. Safe to call more than once.
func (p *faultProxy) Close() {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		conns := p.snapshot()
		p.mu.Unlock()
		_ = p.ln.Close()
		for _, pc := range conns {
			pc.close(true)
		}
		p.wg.Wait()
	})
}

// snapshot lists the open connections; p.mu is held.
func (p *faultProxy) snapshot() []*proxyConn {
	conns := make([]*proxyConn, 0, len(p.conns))
	for pc := range p.conns {
		conns = append(conns, pc)
	}
	return conns
}

func (p *faultProxy) gate() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.flowing
}

func (p *faultProxy) currentDelay() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.delay
}

// waitFlowing waits until the proxy is not stalled; false when done closes
// first.
func (p *faultProxy) waitFlowing(done <-chan struct{}) bool {
	select {
	case <-done:
		return false
	case <-p.gate():
		return true
	}
}

func (p *faultProxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed (Close), or a fatal listener error
		}
		p.mu.Lock()
		p.accepted++
		if p.closed || p.cut {
			p.refused++
			p.mu.Unlock()
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			_ = c.Close()
			continue
		}
		pc := &proxyConn{client: c, done: make(chan struct{})}
		p.conns[pc] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(pc)
	}
}

// serve dials the target once the proxy lets bytes through, then pumps
// both directions until both end.
func (p *faultProxy) serve(pc *proxyConn) {
	defer p.wg.Done()
	defer func() {
		pc.close(false)
		p.mu.Lock()
		delete(p.conns, pc)
		p.mu.Unlock()
	}()
	if !p.waitFlowing(pc.done) { // a black hole does not reach the target
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	dialDone := make(chan struct{})
	go func() { // bounded: ends with the dial
		select {
		case <-pc.done:
			cancel()
		case <-dialDone:
		}
	}()
	var d net.Dialer
	server, err := d.DialContext(ctx, "tcp", p.target)
	close(dialDone)
	cancel()
	if err != nil || !pc.setServer(server) {
		return
	}
	var pumps sync.WaitGroup
	pumps.Add(2)
	go func() { defer pumps.Done(); p.pump(pc, pc.client, server) }()
	go func() { defer pumps.Done(); p.pump(pc, server, pc.client) }()
	pumps.Wait()
}

type proxyChunk struct {
	b   []byte
	due time.Time
}

// pump forwards src to dst: a reader goroutine queues chunks (stamped with
// their due time), this goroutine writes them when due and while the proxy
// is not stalled. At src's EOF the write side of dst is closed (half
// close); on any error the whole connection is closed.
func (p *faultProxy) pump(pc *proxyConn, src, dst net.Conn) {
	ch := make(chan proxyChunk, proxyPipeDepth)
	var readErr error // written before ch is closed
	go func() {
		defer close(ch)
		for {
			if !p.waitFlowing(pc.done) {
				readErr = net.ErrClosed
				return
			}
			buf := make([]byte, proxyChunkSize)
			n, err := src.Read(buf)
			if n > 0 {
				select {
				case ch <- proxyChunk{b: buf[:n], due: time.Now().Add(p.currentDelay())}:
				case <-pc.done:
					readErr = net.ErrClosed
					return
				}
			}
			if err != nil {
				readErr = err
				return
			}
		}
	}()
	defer func() {
		for range ch { // let the reader finish (pc is closed, so it does)
		}
	}()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for c := range ch {
		if wait := time.Until(c.due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-pc.done:
				return
			}
		}
		if !p.waitFlowing(pc.done) {
			return
		}
		if _, err := dst.Write(c.b); err != nil {
			pc.close(true)
			return
		}
	}
	if !errors.Is(readErr, io.EOF) {
		pc.close(true)
		return
	}
	if !p.waitFlowing(pc.done) { // a FIN is a byte of the stream too
		return
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	} else {
		pc.close(false)
	}
}

// ---------------------------------------------------------------------
// Tests of the proxy itself, against an echo server.

// proxyEchoServer echoes every connection until the test ends.
func proxyEchoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func proxyDial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// proxyRoundTrip writes msg and reads it back within timeout.
func proxyRoundTrip(c net.Conn, msg string, timeout time.Duration) (string, error) {
	_ = c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	buf := make([]byte, len(msg))
	_, err := io.ReadFull(c, buf)
	return string(buf), err
}

func proxyTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestProxyForwardsCutsAndHeals(t *testing.T) {
	p := newFaultProxy(t, proxyEchoServer(t))
	c := proxyDial(t, p.Addr())
	if got, err := proxyRoundTrip(c, "hello", 2*time.Second); err != nil || got != "hello" {
		t.Fatalf("echo through the proxy: %q, %v", got, err)
	}

	p.Cut()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || proxyTimeout(err) {
		t.Fatalf("read on a cut connection: %v, want it closed", err)
	}
	// New connections are refused (accepted, then reset) until Heal. The
	// reset may even come before connect returns.
	if c2, err := net.DialTimeout("tcp", p.Addr(), 2*time.Second); err == nil {
		defer c2.Close()
		if _, err := proxyRoundTrip(c2, "x", 2*time.Second); err == nil || proxyTimeout(err) {
			t.Fatalf("a connection while cut: %v, want it closed", err)
		}
	}
	testutil.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		if _, refused, open := p.Stats(); refused < 1 || open != 0 {
			return errors.New("connections still open or none refused")
		}
		return nil
	})

	p.Heal()
	c3 := proxyDial(t, p.Addr())
	if got, err := proxyRoundTrip(c3, "again", 2*time.Second); err != nil || got != "again" {
		t.Fatalf("echo after Heal: %q, %v", got, err)
	}
}

func TestProxyStallIsABlackHole(t *testing.T) {
	p := newFaultProxy(t, proxyEchoServer(t))
	c := proxyDial(t, p.Addr())
	if _, err := proxyRoundTrip(c, "warm", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Stall()
	// Nothing comes back, and the connection is not closed: the read
	// times out.
	if _, err := proxyRoundTrip(c, "held", 300*time.Millisecond); !proxyTimeout(err) {
		t.Fatalf("read through a stalled proxy: %v, want a timeout", err)
	}
	// A connection made during the stall is accepted but gets nothing.
	c2 := proxyDial(t, p.Addr())
	if _, err := proxyRoundTrip(c2, "new", 200*time.Millisecond); !proxyTimeout(err) {
		t.Fatalf("new connection through a stalled proxy: %v, want a timeout", err)
	}
	p.Unstall()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "held" {
		t.Fatalf("after Unstall: %q, %v; want the held bytes", buf, err)
	}
	_ = c2.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf = make([]byte, 3)
	if _, err := io.ReadFull(c2, buf); err != nil || string(buf) != "new" {
		t.Fatalf("new connection after Unstall: %q, %v", buf, err)
	}
	if got, err := proxyRoundTrip(c, "more", 2*time.Second); err != nil || got != "more" {
		t.Fatalf("echo after Unstall: %q, %v", got, err)
	}
}

func TestProxyDelay(t *testing.T) {
	p := newFaultProxy(t, proxyEchoServer(t))
	c := proxyDial(t, p.Addr())
	if _, err := proxyRoundTrip(c, "warm", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	const d = 100 * time.Millisecond
	p.SetDelay(d)
	// Several chunks in a row: each is delayed by d, not by d times its
	// rank (latency, not bandwidth).
	start := time.Now()
	for i := range 5 {
		if _, err := c.Write([]byte{byte('a' + i)}); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "abcde" {
		t.Fatalf("delayed echo: %q, %v", buf, err)
	}
	rtt := time.Since(start)
	if rtt < 2*d || rtt > 2*time.Second {
		t.Fatalf("round trip with a %s delay each way took %s", d, rtt)
	}
	p.SetDelay(0)
	if _, err := proxyRoundTrip(c, "fast", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("round trip with %s each way: %s", d, rtt.Round(time.Millisecond))
}

// Close ends every connection and goroutine (goleak in TestMain checks
// the goroutines at the end of the package).
func TestProxyClose(t *testing.T) {
	p := newFaultProxy(t, proxyEchoServer(t))
	c := proxyDial(t, p.Addr())
	if _, err := proxyRoundTrip(c, "x", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Stall() // a stalled connection must not hold Close up
	proxyDial(t, p.Addr())
	testutil.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		if acc, _, _ := p.Stats(); acc < 2 {
			return errors.New("second connection not accepted yet")
		}
		return nil
	})
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return within 5s")
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || proxyTimeout(err) {
		t.Fatalf("read after Close: %v, want the connection closed", err)
	}
	if c3, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		c3.Close()
		t.Fatal("the proxy still accepts connections after Close")
	}
}
