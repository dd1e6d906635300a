package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// idleConns are connections held open without traffic during a run
// (-idle): what an instance's memory costs per connected client that says
// nothing. They are anonymous (no HELLO), read only to answer pings, and
// use small buffers so that the bench's side stays cheap.
type idleConns struct {
	conns []*websocket.Conn
	wg    sync.WaitGroup
}

// idleDialWait bounds dialling all of them.
const idleDialWait = 2 * time.Minute

// openIdle dials n connections to url, one after the other.
func openIdle(ctx context.Context, url string, n int) (*idleConns, error) {
	ic := &idleConns{}
	ctx, cancel := context.WithTimeout(ctx, idleDialWait)
	defer cancel()
	d := websocket.Dialer{HandshakeTimeout: dialTimeout, ReadBufferSize: 256, WriteBufferSize: 256}
	for i := range n {
		c, _, err := d.DialContext(ctx, url, nil)
		if err != nil {
			ic.close()
			return nil, fmt.Errorf("idle connection %d of %d: %w", i+1, n, err)
		}
		ic.conns = append(ic.conns, c)
		ic.wg.Go(func() {
			for {
				if _, _, err := c.NextReader(); err != nil { // answers pings
					return
				}
			}
		})
	}
	return ic, nil
}

// close closes every connection and waits for their readers.
func (ic *idleConns) close() {
	if ic == nil {
		return
	}
	for _, c := range ic.conns {
		_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""),
			time.Now().Add(100*time.Millisecond))
		_ = c.Close()
	}
	ic.wg.Wait()
	ic.conns = nil
}
