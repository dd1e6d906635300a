package client_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/slipstream-sync/slipstream/client"
)

// A receiver subscribes with a handler; a publisher sets a key targeted at
// the receiver's tag. The handler's nil return acknowledges the message.
func ExampleSession_Subscribe() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	recv, err := client.Connect(ctx, exampleURL, client.SessionOptions{
		Options: client.Options{ID: "ledger", Tags: []string{"ledger"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer recv.Close()

	got := make(chan string, 1)
	subCtx, stop := context.WithCancel(ctx)
	defer stop()
	go recv.Subscribe(subCtx, func(_ context.Context, d *client.Delivery) error {
		got <- fmt.Sprintf("%s %s = %s", d.Msg.Type, d.Msg.Key, d.Msg.Value)
		return nil // applied: acknowledge
	}, client.SubscribeOptions{
		Dedup: client.NewMemoryDedup(0), // each messageId handled once
	})

	pub, err := client.Connect(ctx, exampleURL, client.SessionOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
	if _, err := pub.SetKey(ctx, "order:42", map[string]string{"status": "paid"}, client.Targeting("ledger")); err != nil {
		log.Fatal(err)
	}
	fmt.Println(<-got)
	// Output: SK order:42 = {"status":"paid"}
}

// Typed calls set state and read it back from the instance.
func ExampleSession_SetWeighted() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := client.Connect(ctx, exampleURL, client.SessionOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	if _, err := s.SetWeighted(ctx, "split:eu", map[string]float64{"acq-a": 70, "acq-b": 30}); err != nil {
		log.Fatal(err)
	}
	if _, err := s.SetArray(ctx, "hosts:eu", []string{"pay-1", "pay-2"}); err != nil {
		log.Fatal(err)
	}
	w, _, err := s.GetWeighted(ctx, "split:eu")
	if err != nil {
		log.Fatal(err)
	}
	hosts, _, err := s.GetArray(ctx, "hosts:eu")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(w["acq-a"], w["acq-b"], len(hosts))
	// Output: 70 30 2
}

// Get returns whether the key exists: deleted keys are not found.
func ExampleSession_DeleteKey() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := client.Connect(ctx, exampleURL, client.SessionOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	if _, err := s.SetKey(ctx, "feature:beta", true); err != nil {
		log.Fatal(err)
	}
	v, found, _ := s.Get(ctx, "feature:beta")
	fmt.Println(string(v), found)
	if _, err := s.DeleteKey(ctx, "feature:beta"); err != nil {
		log.Fatal(err)
	}
	_, found, _ = s.Get(ctx, "feature:beta")
	fmt.Println(found)
	// Output:
	// true true
	// false
}

// An instance command; slipstream.* commands need a listener with
// allow_commands.
func ExampleSession_Command() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := client.Connect(ctx, exampleURL, client.SessionOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	if _, err := s.Command(ctx, "slipstream.set_log_level", map[string]string{"level": "warn"}); err != nil {
		log.Fatal(err)
	}
	res, err := s.Command(ctx, "slipstream.stats", nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(res) > 0)
	// Output: true
}

// NewSW builds the message; it refuses a weight that is not finite and >= 0
// before anything is sent.
func ExampleNewSW() {
	m, err := client.NewSW("split", map[string]float64{"acq-a": 70, "acq-b": 30})
	fmt.Println(m.Type, m.Key, string(m.Value), err)
	_, err = client.NewSW("split", map[string]float64{"acq-a": -1})
	fmt.Println(err)
	// Output:
	// SW split {"acq-a":70,"acq-b":30} <nil>
	// slipstream client: SW "split": the weight of "acq-a" is -1; weights are finite and >= 0
}
