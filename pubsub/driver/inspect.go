package driver

import (
	"cmp"
	"context"
	"slices"
)

// Inspector is implemented by adapters that can list what the broker holds:
// topics with their message counts and consumer groups with their lag. It
// is optional admin for tools (omnibus topics, omnibus groups), like
// TopicDeleter; package pubsub reaches it through Client.Topics and
// Client.Groups and returns ErrUnsupported where an adapter lacks it. An
// adapter whose broker cannot answer a question portably returns an error
// wrapping ErrUnsupported that says where to look instead.
//
// Every network wait of an Inspector call is bounded by a timeout of the
// adapter's own as well as by ctx. Counts the broker does not report are -1,
// never a guess.
type Inspector interface {
	// Topics lists the topics the broker knows, sorted by name.
	Topics(ctx context.Context) ([]TopicInfo, error)
	// Groups lists the consumer groups of topic (of every topic when topic
	// is ""), sorted by topic and group. groups names the groups to report
	// where the broker cannot list them (RabbitMQ), and otherwise narrows
	// the list to them; nil means all.
	Groups(ctx context.Context, topic string, groups []string) ([]GroupInfo, error)
}

// TopicInfo is one topic as the broker reports it.
type TopicInfo struct {
	// Name is the topic.
	Name string `json:"topic"`
	// Partitions is the number of partitions (Kafka); 0 where the broker
	// has none.
	Partitions int `json:"partitions,omitempty"`
	// Messages is how many messages the broker holds for the topic now, as
	// the adapter documents it (retained records on Kafka, distinct
	// waiting messages on Postgres, ...); -1 when unknown.
	Messages int64 `json:"messages"`
	// Groups is the number of consumer groups of the topic; -1 when
	// unknown.
	Groups int `json:"groups"`
}

// GroupInfo is one consumer group of one topic.
type GroupInfo struct {
	Topic string `json:"topic"`
	// Group is the group's name; "" for messages kept while a topic has no
	// group yet (the backlog that its first group adopts).
	Group string `json:"group"`
	// Lag is how many messages of the topic the group has not acked yet
	// (waiting, delayed or in flight, as the adapter documents it); -1
	// when unknown.
	Lag int64 `json:"lag"`
	// InFlight is how many of them are delivered to a member and not yet
	// acked; -1 when unknown.
	InFlight int64 `json:"in_flight"`
	// Members is the number of connected members (consumers); -1 when
	// unknown.
	Members int `json:"members"`
	// Partitions details Lag per partition where the broker has them.
	Partitions []PartitionLag `json:"partitions,omitempty"`
}

// PartitionLag is a group's position in one partition.
type PartitionLag struct {
	Partition int32 `json:"partition"`
	// Committed is the group's committed offset (-1: none yet).
	Committed int64 `json:"committed"`
	// End is the partition's end offset (the next offset to be written).
	End int64 `json:"end"`
	// Lag is End minus Committed (from the partition's start offset when
	// nothing is committed).
	Lag int64 `json:"lag"`
}

// SortGroups sorts gs by topic, then group: the order Inspector.Groups
// returns.
func SortGroups(gs []GroupInfo) {
	slices.SortFunc(gs, func(a, b GroupInfo) int {
		return cmp.Or(cmp.Compare(a.Topic, b.Topic), cmp.Compare(a.Group, b.Group))
	})
}
