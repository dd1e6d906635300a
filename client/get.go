package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	slipstream "github.com/slipstream-sync/slipstream"
)

// Option changes a message the SDK builds (Get, GetArray, GetWeighted,
// Command, SetKey, SetArray, SetWeighted, DeleteKey) before it is sent.
type Option func(*slipstream.Message)

// asker sends a request and returns its first reply: a Client, or a
// Session that retries across reconnections.
type asker interface {
	First(ctx context.Context, m *slipstream.Message) (*slipstream.Message, error)
}

// calls are the typed calls that Client and Session share (Get, SetKey,
// Command...), built on the First and Publish of the type embedding them.
type calls struct {
	via interface {
		asker
		publisher
	}
}

// Targeting sends a request only to instances (gets and slipstream.*
// commands) or clients (other commands) carrying at least one of tags, and
// a data message only to the environments and clients carrying one of
// them: the message's targetedTags.
func Targeting(tags ...string) Option {
	return func(m *slipstream.Message) { m.TargetedTags = append(m.TargetedTags, tags...) }
}

// WithMessageID gives the request its own messageId instead of a new one.
func WithMessageID(id string) Option {
	return func(m *slipstream.Message) { m.MessageID = id }
}

// ReplyError is a reply that carries an error instead of a value or a
// result: a command that failed, or a GA/GW on a key set by another type.
type ReplyError struct {
	Instance string // the answering instance (the reply's originInstanceId)
	Text     string // the reply's error
}

func (e *ReplyError) Error() string {
	if e.Instance == "" {
		return e.Text
	}
	return e.Instance + ": " + e.Text
}

// First sends the request m with Request and returns the first reply, or
// why none came: ctx's error wrapped with what was asked (errors.Is(err,
// context.DeadlineExceeded) when nobody answered in time), the instance's
// refusal as a *slipstream.Error, or the connection's error. Later replies
// are dropped.
func (c *Client) First(ctx context.Context, m *slipstream.Message) (*slipstream.Message, error) {
	r, err := c.Request(ctx, m)
	if err == nil {
		defer r.Close()
		var reply *slipstream.Message
		if reply, err = r.Next(); err == nil {
			return reply, nil
		}
	}
	if ctxErr := ctx.Err(); ctxErr != nil && errors.Is(err, ctxErr) {
		what := m.Key
		if m.Type == slipstream.TypeCMD {
			what = m.Command
		}
		return nil, fmt.Errorf("slipstream client: no reply to %s %q: %w", m.Type, what, err)
	}
	return nil, err
}

// Get reads key (GK) from the first instance that answers: its value as
// set by SK, SA or SW, and whether it was found (a key never set, or
// deleted, is not found). Several instances may hold the key; use
// Targeting to choose which ones are asked, and Request to read every
// answer.
func (k *calls) Get(ctx context.Context, key string, opts ...Option) (json.RawMessage, bool, error) {
	return get(ctx, k.via, slipstream.TypeGK, key, opts)
}

// GetArray reads key as an array (GA): the key must have been set by SA,
// otherwise the answer is a *ReplyError naming the type that set it.
func (k *calls) GetArray(ctx context.Context, key string, opts ...Option) ([]json.RawMessage, bool, error) {
	return getArray(ctx, k.via, key, opts)
}

func getArray(ctx context.Context, a asker, key string, opts []Option) ([]json.RawMessage, bool, error) {
	v, found, err := get(ctx, a, slipstream.TypeGA, key, opts)
	if err != nil || !found {
		return nil, found, err
	}
	var arr []json.RawMessage
	if err := json.Unmarshal(v, &arr); err != nil {
		return nil, true, fmt.Errorf("slipstream client: GA %q: the value is not an array: %w", key, err)
	}
	return arr, true, nil
}

// GetWeighted reads key as a weighted set (GW): member -> weight. The key
// must have been set by SW, otherwise the answer is a *ReplyError.
func (k *calls) GetWeighted(ctx context.Context, key string, opts ...Option) (map[string]float64, bool, error) {
	return getWeighted(ctx, k.via, key, opts)
}

func getWeighted(ctx context.Context, a asker, key string, opts []Option) (map[string]float64, bool, error) {
	v, found, err := get(ctx, a, slipstream.TypeGW, key, opts)
	if err != nil || !found {
		return nil, found, err
	}
	var w map[string]float64
	if err := json.Unmarshal(v, &w); err != nil {
		return nil, true, fmt.Errorf("slipstream client: GW %q: the value is not an object of weights: %w", key, err)
	}
	return w, true, nil
}

func get(ctx context.Context, a asker, t slipstream.Type, key string, opts []Option) (json.RawMessage, bool, error) {
	m := &slipstream.Message{Type: t, Key: key}
	for _, o := range opts {
		o(m)
	}
	reply, err := a.First(ctx, m)
	if err != nil {
		return nil, false, err
	}
	if reply.Error != "" {
		return nil, false, &ReplyError{Instance: reply.OriginInstanceID, Text: reply.Error}
	}
	found := reply.Found != nil && *reply.Found
	if !found {
		return nil, false, nil
	}
	return reply.Value, true, nil
}

// Command sends the command name with args (nil: none; a json.RawMessage
// is sent as it is; anything else is marshalled, and must be a JSON
// object) and returns the first reply's result, or its error as a
// *ReplyError. Commands named slipstream.* are run by instances, and only
// for a connection whose listener has allow_commands (otherwise the
// instance refuses with ERR forbidden, a *slipstream.Error); other commands
// are answered by the clients they are delivered to.
func (k *calls) Command(ctx context.Context, name string, args any, opts ...Option) (json.RawMessage, error) {
	return command(ctx, k.via, name, args, opts)
}

func command(ctx context.Context, a asker, name string, args any, opts []Option) (json.RawMessage, error) {
	m, err := NewCommand(name, args)
	if err != nil {
		return nil, err
	}
	for _, o := range opts {
		o(m)
	}
	reply, err := a.First(ctx, m)
	if err != nil {
		return nil, err
	}
	if reply.Error != "" {
		return nil, &ReplyError{Instance: reply.OriginInstanceID, Text: reply.Error}
	}
	return reply.Result, nil
}

// NewCommand builds a CMD message for name with args (see Command).
func NewCommand(name string, args any) (*slipstream.Message, error) {
	m := &slipstream.Message{Type: slipstream.TypeCMD, Command: name}
	switch a := args.(type) {
	case nil:
	case json.RawMessage:
		m.Args = a
	default:
		b, err := json.Marshal(a)
		if err != nil {
			return nil, fmt.Errorf("slipstream client: command %q: args: %w", name, err)
		}
		m.Args = b
	}
	return m, nil
}
