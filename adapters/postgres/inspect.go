package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// inspectTimeout bounds each Inspector query (connecting included).
const inspectTimeout = 30 * time.Second

// Topics implements driver.Inspector: every topic that has a group or a
// waiting message, Messages the distinct messages waiting in at least one
// of its groups (or in its backlog), Groups its named groups and live
// anonymous ones.
func (b *Broker) Topics(ctx context.Context) ([]driver.TopicInfo, error) {
	if b.isClosed() {
		return nil, fmt.Errorf("postgres: list topics: %w", driver.ErrClosed)
	}
	ctx, cancel := context.WithTimeout(ctx, inspectTimeout)
	defer cancel()
	rows, err := b.pool.Query(ctx, `SELECT t.topic, coalesce(m.n, 0), coalesce(g.n, 0)
FROM (SELECT topic FROM `+b.groups+` UNION SELECT DISTINCT topic FROM `+b.queue+`) AS t
LEFT JOIN (SELECT topic, count(DISTINCT msg_id) AS n FROM `+b.queue+` GROUP BY topic) AS m USING (topic)
LEFT JOIN (SELECT topic, count(*) AS n FROM `+b.groups+` WHERE NOT anonymous OR expires_at > now() GROUP BY topic) AS g USING (topic)
ORDER BY t.topic`)
	if err != nil {
		return nil, fmt.Errorf("postgres: list topics: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (driver.TopicInfo, error) {
		var ti driver.TopicInfo
		err := r.Scan(&ti.Name, &ti.Messages, &ti.Groups)
		return ti, err
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: list topics: %w", err)
	}
	return out, nil
}

// Groups implements driver.Inspector from the adapter's tables: Lag is the
// group's rows (waiting, delayed by a nack, or claimed and not yet acked),
// InFlight those claimed by a live subscription (claim not yet expired).
// Members is unknown (-1). Messages published while a topic had no named
// group wait in its backlog, reported as group "".
func (b *Broker) Groups(ctx context.Context, topic string, groups []string) ([]driver.GroupInfo, error) {
	if b.isClosed() {
		return nil, fmt.Errorf("postgres: list groups: %w", driver.ErrClosed)
	}
	if !validText(topic) {
		return nil, fmt.Errorf("postgres: list groups: topic %q is not valid UTF-8 or contains NUL: %w", topic, driver.ErrInvalid)
	}
	if groups == nil {
		groups = []string{}
	}
	ctx, cancel := context.WithTimeout(ctx, inspectTimeout)
	defer cancel()
	const held = `count(q.seq) FILTER (WHERE q.holder IS NOT NULL AND q.visible_at > now())`
	rows, err := b.pool.Query(ctx, `SELECT g.topic, g.grp, count(q.seq), `+held+`
FROM `+b.groups+` AS g LEFT JOIN `+b.queue+` AS q ON q.topic = g.topic AND q.grp = g.grp
WHERE ($1 = '' OR g.topic = $1) AND (NOT g.anonymous OR g.expires_at > now())
  AND (cardinality($2::text[]) = 0 OR g.grp = ANY($2::text[]))
GROUP BY g.topic, g.grp
UNION ALL
SELECT q.topic, '', count(q.seq), `+held+`
FROM `+b.queue+` AS q
WHERE q.grp = '' AND ($1 = '' OR q.topic = $1) AND cardinality($2::text[]) = 0
GROUP BY q.topic
ORDER BY 1, 2`, topic, groups)
	if err != nil {
		return nil, fmt.Errorf("postgres: list groups: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (driver.GroupInfo, error) {
		gi := driver.GroupInfo{Members: -1}
		err := r.Scan(&gi.Topic, &gi.Group, &gi.Lag, &gi.InFlight)
		return gi, err
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: list groups: %w", err)
	}
	return out, nil
}

var _ driver.Inspector = (*Broker)(nil)
