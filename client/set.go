package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"

	slipstream "github.com/slipstream-sync/slipstream"
)

// publisher publishes one data message and waits for its ACK: a Client, or
// a Session that retries across reconnections.
type publisher interface {
	Publish(ctx context.Context, m *slipstream.Message) (*slipstream.Message, error)
}

// NewSK builds an SK message setting key to value: a json.RawMessage is
// sent as it is, anything else is marshalled with encoding/json. A nil
// value (or JSON null) deletes the key.
func NewSK(key string, value any) (*slipstream.Message, error) {
	v, err := marshalValue(slipstream.TypeSK, key, value)
	if err != nil {
		return nil, err
	}
	return &slipstream.Message{Type: slipstream.TypeSK, Key: key, Value: v}, nil
}

// NewSA builds an SA message replacing the array at key with values, which
// must marshal to a JSON array (a slice, or a json.RawMessage holding one).
func NewSA(key string, values any) (*slipstream.Message, error) {
	v, err := marshalValue(slipstream.TypeSA, key, values)
	if err != nil {
		return nil, err
	}
	if len(v) == 0 || v[0] != '[' {
		return nil, fmt.Errorf("slipstream client: SA %q: the value must be a JSON array, not %.40s", key, v)
	}
	return &slipstream.Message{Type: slipstream.TypeSA, Key: key, Value: v}, nil
}

// NewSW builds an SW message replacing the weighted set at key with
// weights (member -> weight; each weight finite and >= 0).
func NewSW(key string, weights map[string]float64) (*slipstream.Message, error) {
	for member, w := range weights {
		if math.IsNaN(w) || math.IsInf(w, 0) || w < 0 {
			return nil, fmt.Errorf("slipstream client: SW %q: the weight of %q is %v; weights are finite and >= 0", key, member, w)
		}
	}
	if weights == nil {
		weights = map[string]float64{}
	}
	v, err := json.Marshal(weights)
	if err != nil {
		return nil, fmt.Errorf("slipstream client: SW %q: %w", key, err)
	}
	return &slipstream.Message{Type: slipstream.TypeSW, Key: key, Value: v}, nil
}

func marshalValue(t slipstream.Type, key string, value any) (json.RawMessage, error) {
	var v json.RawMessage
	switch x := value.(type) {
	case nil:
		v = json.RawMessage("null")
	case json.RawMessage:
		v = bytes.TrimSpace(x)
		if !json.Valid(v) {
			return nil, fmt.Errorf("slipstream client: %s %q: the value is not valid JSON", t, key)
		}
	default:
		b, err := json.Marshal(x)
		if err != nil {
			return nil, fmt.Errorf("slipstream client: %s %q: %w", t, key, err)
		}
		v = b
	}
	return v, nil
}

// publishBuilt applies opts to the message a builder made, then publishes it.
func publishBuilt(ctx context.Context, p publisher, m *slipstream.Message, err error, opts []Option) (*slipstream.Message, error) {
	if err != nil {
		return nil, err
	}
	for _, o := range opts {
		o(m)
	}
	return p.Publish(ctx, m)
}

// SetKey sets key to value everywhere the message reaches (SK) and returns
// the ACK, as Publish does. value is marshalled as NewSK says; Targeting
// limits where it goes, WithMessageID gives it a messageId.
func (k *calls) SetKey(ctx context.Context, key string, value any, opts ...Option) (*slipstream.Message, error) {
	m, err := NewSK(key, value)
	return publishBuilt(ctx, k.via, m, err, opts)
}

// DeleteKey deletes key everywhere the message reaches (SK with a null
// value).
func (k *calls) DeleteKey(ctx context.Context, key string, opts ...Option) (*slipstream.Message, error) {
	m, err := NewSK(key, nil)
	return publishBuilt(ctx, k.via, m, err, opts)
}

// SetArray replaces the array at key (SA); values must marshal to a JSON
// array.
func (k *calls) SetArray(ctx context.Context, key string, values any, opts ...Option) (*slipstream.Message, error) {
	m, err := NewSA(key, values)
	return publishBuilt(ctx, k.via, m, err, opts)
}

// SetWeighted replaces the weighted set at key (SW).
func (k *calls) SetWeighted(ctx context.Context, key string, weights map[string]float64, opts ...Option) (*slipstream.Message, error) {
	m, err := NewSW(key, weights)
	return publishBuilt(ctx, k.via, m, err, opts)
}
