package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
)

// The router pipeline of `omnibus demo`: orders go through a router with
// Poison, Retry, Dedup and Recover, with injected faults; the final table
// accounts for every order.

// fault is what the demo does to an order.
type fault int

const (
	faultNone      fault = iota
	faultTransient       // the handler fails its first two attempts, then succeeds
	faultDuplicate       // the order is published twice with one ID
	faultInvalid         // a negative amount: a permanent validation error
	faultCorrupt         // the payload is not JSON: a permanent decode error
	faultPanic           // the handler panics every time
	numFaults
)

var faultNames = [numFaults]string{"ok", "transient", "duplicate", "invalid", "corrupt", "panic"}

// faultOf assigns faults deterministically, at most one per order.
func faultOf(id int) fault {
	switch {
	case id%25 == 7:
		return faultInvalid
	case id%50 == 11:
		return faultCorrupt
	case id%97 == 13:
		return faultPanic
	case id%20 == 5:
		return faultDuplicate
	case id%10 == 3:
		return faultTransient
	}
	return faultNone
}

func (f fault) poisoned() bool { return f == faultInvalid || f == faultCorrupt || f == faultPanic }

// wantReason is the poison reason an order with fault f must carry.
func (f fault) wantReason() string {
	if f == faultPanic {
		return middleware.ReasonPanic
	}
	return middleware.ReasonPermanent
}

func orderMsgID(id int) string { return "order-" + strconv.Itoa(id) }

func orderIDOf(msgID string) (int, bool) {
	n, err := strconv.Atoi(strings.TrimPrefix(msgID, "order-"))
	return n, err == nil && strings.HasPrefix(msgID, "order-")
}

// countingStore counts the duplicates Dedup skipped and the concurrent
// duplicates it sent back.
type countingStore struct {
	middleware.DedupStore
	done, busy atomic.Int64
}

func (s *countingStore) Claim(ctx context.Context, key string, lease time.Duration) (middleware.ClaimResult, error) {
	res, err := s.DedupStore.Claim(ctx, key, lease)
	switch res {
	case middleware.ClaimDone:
		s.done.Add(1)
	case middleware.ClaimBusy:
		s.busy.Add(1)
	}
	return res, err
}

// pipelineStats is what the demo observes.
type pipelineStats struct {
	n         int
	published atomic.Int64
	processed []atomic.Int32 // successful handler runs per order
	attempts  atomic.Int64   // handler runs
	failures  atomic.Int64   // failed handler runs (retried or poisoned)
	invoices  atomic.Int64

	mu       sync.Mutex
	poisoned map[int][]string // order → reasons seen in the poison topic
	badDLQ   []string         // poison messages that are not orders
}

func (s *pipelineStats) processedTotal() (n int64) {
	for i := range s.processed {
		n += int64(s.processed[i].Load())
	}
	return n
}

func (s *pipelineStats) poisonedTotal() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.poisoned {
		n += len(r)
	}
	return n
}

func runRouterDemo(ctx context.Context, out io.Writer, d *DemoCmd) error {
	n := d.Pipeline
	if n < 1 {
		return nil
	}
	client, err := pubsub.Open(ctx, d.URL)
	if err != nil {
		return err
	}
	defer client.Close()
	const (
		topic    = "demo.orders"
		poisonT  = "demo.orders.poison"
		invoiceT = "demo.invoices"
	)
	var want [numFaults]int
	dups := 0
	for id := 0; id < n; id++ {
		f := faultOf(id)
		want[f]++
		if f == faultDuplicate {
			dups++
		}
	}
	via := "published directly"
	if d.Outbox {
		via = "written through a SQLite outbox and relayed"
	}
	fmt.Fprintf(out, "\nrouter pipeline on %s: %d orders (%d published twice), %s, through Poison → Retry → Dedup → Recover, 16 key lanes\n",
		pubsub.Redact(d.URL), n, dups, via)

	st := &pipelineStats{n: n, processed: make([]atomic.Int32, n), poisoned: map[int][]string{}}
	store := &countingStore{DedupStore: middleware.NewMemoryDedupStore(middleware.MemoryDedupOptions{TTL: time.Hour})}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelError}))

	r := router.New(client, router.Options{Logger: logger, ShutdownTimeout: 5 * time.Second, NackDelay: 10 * time.Millisecond})
	r.Use(
		middleware.CorrelationID(),
		middleware.Poison(client, poisonT, middleware.PoisonOptions{}),
		middleware.Retry(middleware.RetryOptions{MaxAttempts: 4, InitialInterval: time.Millisecond, MaxInterval: 20 * time.Millisecond}),
		middleware.Dedup(store, middleware.DedupOptions{Lease: 30 * time.Second, BusyDelay: 10 * time.Millisecond}),
		middleware.Recover(),
	)
	r.Handle(topic, "billing", router.JSON(func(ctx context.Context, m *pubsub.Message, o order) error {
		st.attempts.Add(1)
		if o.ID < 0 || o.ID >= n {
			st.failures.Add(1)
			return pubsub.Permanent(fmt.Errorf("order id %d out of range", o.ID))
		}
		switch faultOf(o.ID) {
		case faultTransient:
			if m.Attempt < 3 {
				st.failures.Add(1)
				return fmt.Errorf("payment service unavailable (attempt %d)", m.Attempt)
			}
		case faultPanic:
			st.failures.Add(1)
			var ledger map[string]float64
			ledger[o.Customer] += o.Amount // panics: nil map
		}
		if o.Amount < 0 {
			st.failures.Add(1)
			return pubsub.Permanent(fmt.Errorf("order %d: amount %.2f is negative", o.ID, o.Amount))
		}
		inv := &pubsub.Message{ID: "invoice-" + strconv.Itoa(o.ID), Key: m.Key, Payload: m.Payload}
		if err := router.Publish(ctx, invoiceT, inv); err != nil {
			st.failures.Add(1)
			return err
		}
		st.processed[o.ID].Add(1)
		return nil
	}), router.Concurrency(16), router.OrderedByKey())

	// The poison topic and invoice topic readers.
	dlq, err := client.Subscribe(ctx, poisonT, pubsub.Group("demo-dlq"))
	if err != nil {
		return err
	}
	defer dlq.Close()
	inv, err := client.Subscribe(ctx, invoiceT, pubsub.Group("demo-invoices"))
	if err != nil {
		return err
	}
	defer inv.Close()

	runCtx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	routerErr := make(chan error, 1)
	go func() { routerErr <- r.Run(runCtx) }()
	select {
	case <-r.Running():
	case err := <-routerErr:
		return fmt.Errorf("demo: router: %w", err)
	}
	readersCtx, stopReaders := context.WithCancel(runCtx)
	defer stopReaders()
	var readers sync.WaitGroup
	readers.Add(2)
	go func() {
		defer readers.Done()
		for {
			dd, err := dlq.Receive(readersCtx)
			if err != nil {
				return
			}
			id, ok := orderIDOf(dd.Message.ID)
			st.mu.Lock()
			if ok && id >= 0 && id < n {
				st.poisoned[id] = append(st.poisoned[id], dd.Message.Metadata[middleware.MetaPoisonReason])
			} else {
				st.badDLQ = append(st.badDLQ, dd.Message.ID)
			}
			st.mu.Unlock()
			_ = dd.Ack()
		}
	}()
	go func() {
		defer readers.Done()
		for {
			dd, err := inv.Receive(readersCtx)
			if err != nil {
				return
			}
			st.invoices.Add(1)
			_ = dd.Ack()
		}
	}()

	start := time.Now()
	pubErr := make(chan error, 1)
	var ob *outboxStage
	if d.Outbox {
		if ob, err = newOutboxStage(ctx, client); err != nil {
			return err
		}
		defer ob.close()
		ob.run(runCtx)
		go func() { pubErr <- ob.writeOrders(runCtx, topic, n, st) }()
	} else {
		go func() { pubErr <- publishOrders(runCtx, client, topic, n, st) }()
	}

	wantPoisoned := want[faultInvalid] + want[faultCorrupt] + want[faultPanic]
	wantProcessed := int64(n - wantPoisoned)
	complete := func() bool {
		return st.processedTotal() >= wantProcessed && st.poisonedTotal() >= wantPoisoned &&
			store.done.Load() >= int64(dups) && st.invoices.Load() >= wantProcessed &&
			(ob == nil || ob.drained())
	}
	live := newLiveLine(out)
	const line = "  published %5d   processed %5d   failed attempts %5d   poisoned %4d   deduplicated %4d   invoices %5d"
	values := func() []any {
		return []any{st.published.Load(), st.processedTotal(), st.failures.Load(), st.poisonedTotal(), store.done.Load(), st.invoices.Load()}
	}
	progress := func() { live.update(line, values()...) }
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var runErr error
wait:
	for !complete() {
		select {
		case <-tick.C:
			progress()
		case err := <-pubErr:
			if err != nil {
				runErr = err
				break wait
			}
			pubErr = nil
		case <-runCtx.Done():
			runErr = fmt.Errorf("demo: pipeline did not finish in time: %w", runCtx.Err())
			break wait
		}
	}
	live.done(line, values()...)
	elapsed := time.Since(start)
	cancel()
	if err := <-routerErr; err != nil {
		runErr = errors.Join(runErr, fmt.Errorf("demo: router: %w", err))
	}
	stopReaders()
	readers.Wait()

	if ob != nil {
		if err := ob.wait(); err != nil {
			runErr = errors.Join(runErr, fmt.Errorf("demo: relay: %w", err))
		}
	}
	tableErr := pipelineTable(out, st, want, dups, store)
	if ob != nil {
		tableErr = errors.Join(tableErr, ob.report(ctx, out))
	}
	fmt.Fprintf(out, "\n%d orders in %v (%.0f orders/s); %d handler runs, %d failed and were retried or poisoned, %d concurrent duplicates sent back\n",
		n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), st.attempts.Load(), st.failures.Load(), store.busy.Load())
	return errors.Join(runErr, tableErr)
}

// demoOrder returns order id with its injected fault applied, and the
// messages that announce it: a corrupt payload for faultCorrupt, and the
// same message twice (a producer retry: same ID, same payload) for
// faultDuplicate.
func demoOrder(id int) (order, []*pubsub.Message) {
	f := faultOf(id)
	o := order{ID: id, Customer: "c" + strconv.Itoa(id%97), Amount: float64(id%1000) + 0.99}
	if f == faultInvalid {
		o.Amount = -o.Amount
	}
	body, _ := json.Marshal(o)
	if f == faultCorrupt {
		body = body[:len(body)/2]
	}
	m := &pubsub.Message{ID: orderMsgID(id), Key: o.Customer, Payload: body}
	if f == faultDuplicate {
		return o, []*pubsub.Message{m, {ID: m.ID, Key: m.Key, Payload: body}}
	}
	return o, []*pubsub.Message{m}
}

func publishOrders(ctx context.Context, c *pubsub.Client, topic string, n int, st *pipelineStats) error {
	const batch = 100
	msgs := make([]*pubsub.Message, 0, batch+10)
	flush := func() error {
		if len(msgs) == 0 {
			return nil
		}
		if err := c.Publish(ctx, topic, msgs...); err != nil {
			return fmt.Errorf("demo: publish orders: %w", err)
		}
		msgs = msgs[:0]
		return nil
	}
	for id := 0; id < n; id++ {
		_, ms := demoOrder(id)
		msgs = append(msgs, ms...)
		st.published.Add(1)
		if len(msgs) >= batch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// pipelineTable prints the accounting and returns an error if any order is
// missing, processed twice, poisoned wrongly, or a duplicate was not skipped.
func pipelineTable(out io.Writer, st *pipelineStats, want [numFaults]int, dups int, store *countingStore) error {
	type row struct{ orders, once, twice, poisoned, missing int }
	var rows [numFaults]row
	var problems []string
	st.mu.Lock()
	defer st.mu.Unlock()
	reasons := map[string]int{}
	for id := 0; id < st.n; id++ {
		f := faultOf(id)
		rw := &rows[f]
		rw.orders++
		p := int(st.processed[id].Load())
		pr := st.poisoned[id]
		for _, r := range pr {
			reasons[r]++
		}
		switch {
		case p == 1 && len(pr) == 0 && !f.poisoned():
			rw.once++
		case p == 0 && len(pr) == 1 && f.poisoned():
			rw.poisoned++
			if pr[0] != f.wantReason() {
				problems = append(problems, fmt.Sprintf("order %d (%s) poisoned with reason %q, want %q", id, faultNames[f], pr[0], f.wantReason()))
			}
		case p == 0 && len(pr) == 0:
			rw.missing++
			problems = append(problems, fmt.Sprintf("order %d (%s) is missing", id, faultNames[f]))
		default:
			rw.twice++
			problems = append(problems, fmt.Sprintf("order %d (%s) processed %d times and poisoned %d times", id, faultNames[f], p, len(pr)))
		}
	}
	fmt.Fprintf(out, "\n%-10s %7s %15s %9s %13s %8s %8s\n", "order", "orders", "processed once", "poisoned", "deduplicated", "twice", "missing")
	var tot row
	for f := fault(0); f < numFaults; f++ {
		rw := rows[f]
		dd := 0
		if f == faultDuplicate {
			dd = int(store.done.Load())
		}
		fmt.Fprintf(out, "%-10s %7d %15d %9d %13d %8d %8d\n", faultNames[f], rw.orders, rw.once, rw.poisoned, dd, rw.twice, rw.missing)
		tot.orders += rw.orders
		tot.once += rw.once
		tot.poisoned += rw.poisoned
		tot.twice += rw.twice
		tot.missing += rw.missing
	}
	fmt.Fprintf(out, "%-10s %7d %15d %9d %13d %8d %8d\n", "total", tot.orders, tot.once, tot.poisoned, store.done.Load(), tot.twice, tot.missing)
	var rs []string
	for r, k := range reasons {
		rs = append(rs, fmt.Sprintf("%s=%d", r, k))
	}
	sort.Strings(rs)
	fmt.Fprintf(out, "poison reasons: %s\n", strings.Join(rs, " "))

	if got := store.done.Load(); got != int64(dups) {
		problems = append(problems, fmt.Sprintf("%d duplicates skipped, want %d", got, dups))
	}
	if got := st.invoices.Load(); got != int64(tot.once) {
		problems = append(problems, fmt.Sprintf("%d invoices, want %d (one per processed order)", got, tot.once))
	}
	if len(st.badDLQ) > 0 {
		problems = append(problems, fmt.Sprintf("%d unexpected poison messages, first %q", len(st.badDLQ), st.badDLQ[0]))
	}
	if tot.once+tot.poisoned != st.n || tot.once != st.n-(want[faultInvalid]+want[faultCorrupt]+want[faultPanic]) {
		problems = append(problems, fmt.Sprintf("processed once %d + poisoned %d != %d orders", tot.once, tot.poisoned, st.n))
	}
	if len(problems) > 0 {
		fmt.Fprintf(out, "ACCOUNTING FAILED: %d problem(s):\n", len(problems))
		for _, p := range problems[:min(10, len(problems))] {
			fmt.Fprintln(out, "  "+p)
		}
		return fmt.Errorf("demo: router pipeline: the numbers do not add up (%d problems)", len(problems))
	}
	fmt.Fprintf(out, "every order accounted for: %d processed exactly once, %d poisoned with their reason, %d duplicates skipped, 0 missing\n",
		tot.once, tot.poisoned, store.done.Load())
	return nil
}
