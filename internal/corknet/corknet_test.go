package corknet

import (
	"bytes"
	"net"
	"testing"
)

// countConn counts Write calls and keeps what was written.
type countConn struct {
	net.Conn
	writes int
	out    bytes.Buffer
}

func (c *countConn) Write(p []byte) (int, error) { c.writes++; return c.out.Write(p) }

func TestCorkMergesWrites(t *testing.T) {
	under := &countConn{}
	c := New(under)
	c.Write([]byte("a")) // not corked: straight through
	c.Cork()
	c.Write([]byte("b"))
	c.Write([]byte("c"))
	if under.writes != 1 {
		t.Fatalf("%d writes while corked, want 1 (the first)", under.writes)
	}
	if err := c.Uncork(); err != nil {
		t.Fatal(err)
	}
	if under.writes != 2 || under.out.String() != "abc" {
		t.Fatalf("after uncork: %d writes, %q; want 2 writes of \"abc\"", under.writes, under.out.String())
	}
	c.Cork()
	c.Write([]byte("d"))
	c.Write(make([]byte, Limit)) // large: flushes what waits, then goes through
	if under.writes != 4 || under.out.Len() != 4+Limit {
		t.Fatalf("large write while corked: %d writes, %d bytes", under.writes, under.out.Len())
	}
	var nilConn *Conn
	nilConn.Cork()
	if nilConn.Uncork() != nil || Of(under) != nil || Of(c) != c {
		t.Fatal("nil and Of")
	}
}
