package main

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/slipstream-sync/slipstream/internal/store"
	"github.com/slipstream-sync/slipstream/internal/testutil"
)

// forget-link through the admin API of a real instance: refused while the
// link is connected, then its pending deliveries are deleted and it is no
// longer known; unknown ids and a missing -yes are clear errors.
func TestForgetLink(t *testing.T) {
	defer goleak.VerifyNone(t)
	in, admin, stop := startDLQInstance(t)
	defer stop()
	t.Setenv("SLIPSTREAM_ADMIN_TOKEN", testToken)

	addr := in.Source("websocket_server.ingress").(interface{ Addr() net.Addr }).Addr().String()
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws?id=gone-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if l := in.Links().Get("gone-1"); l == nil || !l.Connected() {
			return fmt.Errorf("gone-1 is not connected")
		}
		return nil
	})
	code, _, errOut := runCLI(t, "forget-link", "-admin", admin, "-yes", "gone-1")
	if code != exitError || !strings.Contains(errOut, "is connected") || !strings.Contains(errOut, "409") {
		t.Fatalf("forget-link of a connected link: exit %d: %s", code, errOut)
	}
	ws.Close()
	testutil.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if l := in.Links().Get("gone-1"); l == nil || l.Connected() {
			return fmt.Errorf("gone-1 is still connected (or unknown)")
		}
		return nil
	})
	l := in.Links().Get("gone-1")
	for range 3 {
		if err := in.Store().DB().Update(func(txn *badger.Txn) error {
			return txn.Set(store.OutboxKey("gone-1", l.NextSeq()), []byte(`{"type":"SK","messageId":"m","key":"k","value":1}`))
		}); err != nil {
			t.Fatal(err)
		}
	}

	code, out, errOut := runCLI(t, "forget-link", "-admin", admin, "gone-1")
	if code != exitUsage || out != "" || !strings.Contains(errOut, "add -yes") {
		t.Fatalf("forget-link without -yes: exit %d: %s%s", code, out, errOut)
	}
	code, out, errOut = runCLI(t, "forget-link", "-admin", admin, "-yes", "gone-1")
	if code != exitOK || out != "forgot link gone-1; 3 pending deliveries deleted\n" {
		t.Fatalf("forget-link: exit %d: %s%s", code, out, errOut)
	}
	if in.Links().Get("gone-1") != nil {
		t.Fatal("gone-1 is still known")
	}
	if n, err := in.Store().CountOutbox("gone-1"); err != nil || n != 0 {
		t.Fatalf("outbox of gone-1: %d entries (%v)", n, err)
	}
	code, _, errOut = runCLI(t, "forget-link", "-admin", admin, "-yes", "gone-1")
	if code != exitError || !strings.Contains(errOut, `link "gone-1" is not known`) || !strings.Contains(errOut, "404") {
		t.Fatalf("forget-link of an unknown link: exit %d: %s", code, errOut)
	}
	code, _, errOut = runCLI(t, "forget-link", "-admin", admin, "-yes")
	if code != exitUsage || !strings.Contains(errOut, "one link id") {
		t.Fatalf("forget-link without an id: exit %d: %s", code, errOut)
	}
}
