package main

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	slipstream "github.com/slipstream-sync/slipstream"
)

// sizeValue picks the padding so that a frame is about o.Size bytes, and
// returns that size.
func (r *loadRun) sizeValue() int {
	probe := r.message(r.total, time.Now())
	probe.MessageID = strings.Repeat("0", slipstream.IDLen)
	probe.Value = json.RawMessage(`""`)
	base := len(slipstream.Encode(probe))
	pad := max(0, r.o.Size-base)
	r.value = json.RawMessage(`"` + strings.Repeat("x", pad) + `"`)
	return base + pad
}

// message is the SK for seq: a unique key, the run's tag as targetedTags,
// the send time in benchSentNs (application data, carried unchanged).
func (r *loadRun) message(seq int64, sent time.Time) *slipstream.Message {
	return &slipstream.Message{
		Type:         slipstream.TypeSK,
		Key:          r.tag + "/" + strconv.FormatInt(seq, 10),
		Value:        r.value,
		TargetedTags: []string{r.tag},
		Extra:        []slipstream.Field{{Name: sentField, Value: strconv.AppendInt(nil, sent.UnixNano(), 10)}},
	}
}

// publish runs one publisher until the run's count or deadline, closed loop
// (as many in flight as allowed) or open loop (this publisher's share of
// the rate, on schedule; the lag behind schedule is recorded), then waits
// for its outstanding ACKs.
func (r *loadRun) publish(ctx context.Context, idx int, p *benchPublisher, start, deadline time.Time) {
	var interval time.Duration
	if r.o.Rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(len(r.pubs)) / r.o.Rate)
		start = start.Add(interval * time.Duration(idx) / time.Duration(len(r.pubs)))
	}
	for k := int64(0); ; k++ {
		due := start
		if interval > 0 {
			due = start.Add(interval * time.Duration(k))
			if wait := time.Until(due); wait > 0 {
				select {
				case <-time.After(wait):
				case <-ctx.Done():
				}
			}
		}
		select {
		case p.inflight <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break // the slot may not be ours; nothing more is sent
		}
		now := time.Now()
		if (interval == 0 && now.After(deadline)) || (interval > 0 && !due.Before(deadline)) {
			<-p.inflight // open loop: the schedule ends at the deadline, however late
			break
		}
		seq := r.next.Add(1) - 1
		if seq >= r.total {
			<-p.inflight
			break
		}
		if interval > 0 && seq >= r.o.Warmup {
			p.lagHist.record(now.Sub(due))
		}
		if seq == r.o.Warmup {
			r.startNs.Store(now.UnixNano())
		}
		if err := p.c.PublishAsync(r.message(seq, now), func(_ *slipstream.Message, err error) {
			r.acknowledged(p, seq, now, err)
		}); err != nil {
			<-p.inflight
			r.failed.Add(1)
			r.noteError(err)
			break // the connection is gone
		}
		r.sent.Add(1)
	}
	// Wait for the outstanding ACKs: fill every in-flight slot.
	timer := time.NewTimer(r.o.DrainTimeout)
	defer timer.Stop()
	for range r.o.Inflight {
		select {
		case p.inflight <- struct{}{}:
		case <-timer.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// acknowledged records the outcome of publish seq (on p's reader goroutine).
func (r *loadRun) acknowledged(p *benchPublisher, seq int64, sent time.Time, err error) {
	defer func() { <-p.inflight }()
	if err != nil {
		r.failed.Add(1)
		r.noteError(err)
		return
	}
	r.ackedBits[seq/64].Or(1 << (seq % 64))
	r.acked.Add(1)
	if seq < r.o.Warmup {
		return
	}
	now := time.Now()
	p.ackHist.record(now.Sub(sent))
	for ns := now.UnixNano(); ; {
		last := r.lastAckNs.Load()
		if last >= ns || r.lastAckNs.CompareAndSwap(last, ns) {
			break
		}
	}
}
