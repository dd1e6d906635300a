package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"log"

	slipstream "github.com/slipstream-sync/slipstream"
	"github.com/slipstream-sync/slipstream/client"
)

func Example() {
	ctx := context.Background()
	c, err := client.Dial(ctx, "ws://127.0.0.1:7070/ws", client.Options{ID: "payments-1", Tags: []string{"payments"}})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	_, err = c.Publish(ctx, &slipstream.Message{
		Type:  slipstream.TypeSK,
		Key:   "order:123",
		Value: json.RawMessage(`{"status":"paid"}`),
	})
	var refused *slipstream.Error
	switch {
	case errors.As(err, &refused):
		log.Printf("refused (%s): %s", refused.Code, refused.Text)
	case err != nil:
		log.Fatal(err)
	}

	for d := range c.Deliveries() {
		log.Printf("%s %s = %s", d.Msg.Type, d.Msg.Key, d.Msg.Value)
		if err := d.Ack(); err != nil {
			log.Fatal(err)
		}
	}
}
