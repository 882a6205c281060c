package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	_ "modernc.org/sqlite"             // database/sql driver "sqlite"

	_ "github.com/omnibusmq/omnibus/adapters/all"
	"github.com/omnibusmq/omnibus/config"
	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/middleware/telemetry"
	"github.com/omnibusmq/omnibus/outbox"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
)

// Topics the service uses (after Config.TopicPrefix).
const (
	TopicOrderCreated = "orders.created"
	TopicPoison       = "orders.created.poison"
	TopicPaid         = "payments.completed"
)

// GroupShipping is the consumer group of TopicPaid the service declares at
// start (Config.PaidGroups' default): the shipping service reads payments
// with it, and gets every payment made before it first ran.
const GroupShipping = "shipping"

// Config selects the broker and the database. Only BrokerURL changes when
// the service moves from one broker to another.
type Config struct {
	// BrokerURL: mem://, kafka://..., amqp://..., postgres://... (OMNIBUS_URL).
	BrokerURL string
	// DB is the service's own database: "sqlite:<path>" or a postgres:// URL
	// (ORDERS_DB). The outbox lives in it.
	DB string
	// Telemetry, optional.
	Telemetry *telemetry.Telemetry
	Logger    *slog.Logger
	// TopicPrefix is put before every topic name (ORDERS_TOPIC_PREFIX), so
	// that several instances (or test runs) share a broker apart.
	TopicPrefix string
	// PaidGroups are the consumer groups of the payments topic that must get
	// every payment event. New declares them (subscribes once and closes),
	// because on brokers whose groups only receive what is published after
	// they exist (RabbitMQ, Postgres, memory) an event published before its
	// reader first ran is otherwise lost, or refused as unroutable. Default
	// [GroupShipping]; "-" declares none.
	PaidGroups []string
}

// OrderCreated is the event the HTTP endpoint writes to the outbox.
type OrderCreated struct {
	OrderID     string `json:"order_id"`
	Customer    string `json:"customer"`
	AmountCents int64  `json:"amount_cents"`
}

// Service is the order service: HTTP in, outbox, relay, router.
type Service struct {
	cfg    Config
	log    *slog.Logger
	db     *sql.DB
	dial   outbox.Dialect
	store  *outbox.Store
	client *pubsub.Client
	relay  *outbox.Relay
	router *router.Router

	// The topics, with Config.TopicPrefix.
	topicCreated, topicPoison, topicPaid string

	mu       sync.Mutex
	failOnce map[string]bool // customers whose first charge attempt fails (fault injection)
}

// New opens the database and the broker and wires the pipeline.
func New(ctx context.Context, cfg Config) (*Service, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.PaidGroups == nil {
		cfg.PaidGroups = []string{GroupShipping}
	}
	s := &Service{cfg: cfg, log: cfg.Logger, failOnce: map[string]bool{},
		topicCreated: cfg.TopicPrefix + TopicOrderCreated, topicPoison: cfg.TopicPrefix + TopicPoison, topicPaid: cfg.TopicPrefix + TopicPaid}
	if err := s.openDB(ctx); err != nil {
		return nil, err
	}
	var opts []pubsub.ClientOption
	if cfg.Telemetry != nil {
		opts = append(opts, pubsub.WithObserver(cfg.Telemetry.Observer()))
	}
	bc := config.Config{URL: cfg.BrokerURL}
	client, err := bc.Open(ctx, opts...)
	if err != nil {
		s.db.Close()
		return nil, fmt.Errorf("orderservice: broker %s: %w", bc, err)
	}
	s.client = client
	if err := s.declarePaidGroups(ctx); err != nil {
		s.Close()
		return nil, err
	}
	if s.relay, err = outbox.NewRelay(s.store, client, outbox.RelayOptions{Logger: cfg.Logger, PollInterval: 20 * time.Millisecond}); err != nil {
		s.Close()
		return nil, err
	}
	if cfg.Telemetry != nil {
		if err := cfg.Telemetry.ObserveOutboxLag(func(ctx context.Context) (time.Duration, int64, error) {
			l, err := s.store.Lag(ctx)
			return l.Age, l.Rows, err
		}); err != nil {
			s.Close()
			return nil, err
		}
	}
	s.router = router.New(client, router.Options{Logger: cfg.Logger, ShutdownTimeout: 10 * time.Second})
	var mws []router.Layer
	if cfg.Telemetry != nil {
		mws = append(mws, cfg.Telemetry.Middleware())
	}
	mws = append(mws,
		middleware.CorrelationID(),
		middleware.Poison(client, s.topicPoison, middleware.PoisonOptions{}),
		middleware.Retry(middleware.RetryOptions{MaxAttempts: 5, InitialInterval: 20 * time.Millisecond, MaxInterval: time.Second}),
		middleware.Dedup(middleware.NewMemoryDedupStore(middleware.MemoryDedupOptions{TTL: time.Hour, MaxKeys: 1_000_000}), middleware.DedupOptions{}),
		middleware.Recover(),
	)
	s.router.Use(mws...)
	s.router.Handle(s.topicCreated, "billing", router.JSON(s.charge), router.Concurrency(8), router.OrderedByKey())
	return s, nil
}

// declarePaidGroups makes sure every group in Config.PaidGroups exists on
// the payments topic before the first payment is published.
func (s *Service) declarePaidGroups(ctx context.Context) error {
	for _, g := range s.cfg.PaidGroups {
		if g == "-" {
			continue
		}
		sub, err := s.client.Subscribe(ctx, s.topicPaid, pubsub.Group(g))
		if err != nil {
			return fmt.Errorf("orderservice: declare group %q on %s: %w", g, s.topicPaid, err)
		}
		if err := sub.Close(); err != nil {
			return fmt.Errorf("orderservice: declare group %q on %s: %w", g, s.topicPaid, err)
		}
	}
	return nil
}

// Topic returns the name of one of the service's topics (TopicOrderCreated,
// TopicPoison, TopicPaid) with Config.TopicPrefix.
func (s *Service) Topic(name string) string { return s.cfg.TopicPrefix + name }

func (s *Service) openDB(ctx context.Context) error {
	dsn := s.cfg.DB
	var driverName string
	switch {
	case strings.HasPrefix(dsn, "sqlite:"):
		driverName, s.dial = "sqlite", outbox.SQLite
		dsn = "file:" + strings.TrimPrefix(dsn, "sqlite:") + "?_pragma=busy_timeout(20000)&_pragma=journal_mode(WAL)"
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		driverName, s.dial = "pgx", outbox.Postgres
	default:
		return fmt.Errorf("orderservice: ORDERS_DB=%q: want sqlite:<path> or postgres://...", dsn)
	}
	db, err := sql.Open(driverName, dsn)
	if err != nil {
		return fmt.Errorf("orderservice: open database: %w", err)
	}
	db.SetMaxOpenConns(16)
	s.db = db
	ddl := []string{
		`CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, customer TEXT NOT NULL, amount_cents BIGINT NOT NULL, created_at TIMESTAMP NOT NULL)`,
		// charges has no unique key on purpose: a second row for an order
		// would be a double charge, which is what the tests look for.
		`CREATE TABLE IF NOT EXISTS charges (order_id TEXT NOT NULL, amount_cents BIGINT NOT NULL, message_id TEXT NOT NULL)`,
	}
	for _, q := range ddl {
		if _, err := db.ExecContext(ctx, q); err != nil {
			db.Close()
			return fmt.Errorf("orderservice: migrate: %w", err)
		}
	}
	if s.store, err = outbox.NewSQLStore(db, s.dial, outbox.StoreOptions{}); err != nil {
		db.Close()
		return err
	}
	if err := s.store.Migrate(ctx); err != nil {
		db.Close()
		return err
	}
	return nil
}

func (s *Service) ph(n int) string {
	if s.dial == outbox.Postgres {
		return fmt.Sprintf("$%d", n)
	}
	return "?"
}

// CreateOrder writes the order and its event in one transaction.
func (s *Service) CreateOrder(ctx context.Context, customer string, amountCents int64) (orderID, messageID string, err error) {
	orderID = pubsub.NewID()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return "", "", err
	}
	defer tx.Rollback()
	q := fmt.Sprintf("INSERT INTO orders (id, customer, amount_cents, created_at) VALUES (%s, %s, %s, %s)", s.ph(1), s.ph(2), s.ph(3), s.ph(4))
	if _, err := tx.ExecContext(ctx, q, orderID, customer, amountCents, time.Now().UTC()); err != nil {
		return "", "", fmt.Errorf("orderservice: insert order: %w", err)
	}
	body, _ := json.Marshal(OrderCreated{OrderID: orderID, Customer: customer, AmountCents: amountCents})
	msg := &pubsub.Message{Key: customer, Payload: body, Metadata: map[string]string{"content-type": "application/json"}}
	if err := s.store.Publish(ctx, tx, s.topicCreated, msg); err != nil {
		return "", "", err
	}
	if err := tx.Commit(); err != nil {
		return "", "", fmt.Errorf("orderservice: commit: %w", err)
	}
	return orderID, msg.ID, nil
}

// FailFirstChargeFor makes the first charge attempt of customer's orders fail
// (a transient fault, to show retries).
func (s *Service) FailFirstChargeFor(customer string) {
	s.mu.Lock()
	s.failOnce[customer] = true
	s.mu.Unlock()
}

// ErrInvalidAmount is the permanent error for orders that cannot be charged.
var ErrInvalidAmount = errors.New("amount must be positive")

func (s *Service) charge(ctx context.Context, m *pubsub.Message, o OrderCreated) error {
	if o.AmountCents <= 0 {
		return pubsub.Permanent(fmt.Errorf("order %s: %w (got %d)", o.OrderID, ErrInvalidAmount, o.AmountCents))
	}
	s.mu.Lock()
	fail := s.failOnce[o.Customer]
	if fail {
		s.failOnce[o.Customer] = false
	}
	s.mu.Unlock()
	if fail {
		return fmt.Errorf("order %s: payment gateway timeout (injected)", o.OrderID)
	}
	q := fmt.Sprintf("INSERT INTO charges (order_id, amount_cents, message_id) VALUES (%s, %s, %s)", s.ph(1), s.ph(2), s.ph(3))
	if _, err := s.db.ExecContext(ctx, q, o.OrderID, o.AmountCents, m.ID); err != nil {
		return fmt.Errorf("order %s: record charge: %w", o.OrderID, err)
	}
	paid, _ := json.Marshal(map[string]any{"order_id": o.OrderID, "amount_cents": o.AmountCents})
	return router.Publish(ctx, s.topicPaid, &pubsub.Message{Key: o.Customer, Payload: paid})
}

// Charges returns how many charge rows each order has.
func (s *Service) Charges(ctx context.Context) (map[string]int, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT order_id, COUNT(*) FROM charges GROUP BY order_id")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var id string
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			return nil, err
		}
		out[id] = n
	}
	return out, rows.Err()
}

// Client is the service's broker client.
func (s *Service) Client() *pubsub.Client { return s.client }

// Running is closed once the router's subscriptions are open.
func (s *Service) Running() <-chan struct{} { return s.router.Running() }

// Run runs the router and, once the router's subscriptions are open (so the
// events the relay forwards have a reader on every broker), the relay,
// until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	routerDone := make(chan struct{})
	wg.Add(2)
	go func() { defer wg.Done(); defer close(routerDone); errs <- s.router.Run(ctx) }()
	go func() {
		defer wg.Done()
		select {
		case <-s.router.Running():
			errs <- s.relay.Run(ctx)
		case <-routerDone:
		}
	}()
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			all = append(all, err)
		}
	}
	return errors.Join(all...)
}

// Close releases the broker and the database.
func (s *Service) Close() error {
	var errs []error
	if s.client != nil {
		errs = append(errs, s.client.Close())
	}
	if s.db != nil {
		errs = append(errs, s.db.Close())
	}
	return errors.Join(errs...)
}

// HTTP returns the service's API: POST /orders {"customer","amount_cents"}.
func (s *Service) HTTP() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /orders", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Customer    string `json:"customer"`
			AmountCents int64  `json:"amount_cents"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&in); err != nil || in.Customer == "" {
			http.Error(w, `{"error":"body must be {\"customer\": non-empty string, \"amount_cents\": integer}"}`, http.StatusBadRequest)
			return
		}
		orderID, msgID, err := s.CreateOrder(r.Context(), in.Customer, in.AmountCents)
		if err != nil {
			s.log.Error("create order", "error", err)
			http.Error(w, `{"error":"internal"}`, http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(map[string]string{"order_id": orderID, "message_id": msgID})
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	return mux
}
