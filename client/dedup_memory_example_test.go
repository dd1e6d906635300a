package client_test

import (
	"context"
	"fmt"
	"time"

	"github.com/slipstream-sync/slipstream/client"
)

func ExampleNewMemoryDedup() {
	ctx := context.Background()
	store := client.NewMemoryDedup(0) // up to client.DefaultMemoryDedupEntries keys
	key := client.DedupKey("azure-1", "msg-abc")

	// The first delivery: claim it, handle it, mark it done.
	r, _ := store.Claim(ctx, key, "receiver-1", 30*time.Second)
	fmt.Println("first delivery:", r)

	// The same message from the cluster group's other instance, while
	// receiver-1 is still handling it: Subscribe waits for receiver-1.
	r, _ = store.Claim(ctx, key, "receiver-2", 30*time.Second)
	fmt.Println("redundant delivery:", r)

	_ = store.Done(ctx, key, "receiver-1", time.Hour)

	// A redelivery after the handler succeeded: ACK it without handling it.
	r, _ = store.Claim(ctx, key, "receiver-2", 30*time.Second)
	fmt.Println("redelivery:", r)
	// Output:
	// first delivery: claimed
	// redundant delivery: busy
	// redelivery: handled
}
