package pubsub

// As is the escape hatch to broker-specific details of one delivery (Go
// CDK's pattern): target must be a non-nil pointer of a type the adapter
// documents; As sets *target and reports whether it did. The Kafka adapter
// sets a *kafka.Position (partition and offset of the record). It reads the
// delivery only: Ack and Nack work as before.
func (d *Delivery) As(target any) bool {
	if target == nil {
		return false
	}
	a, ok := d.ackID.(interface{ As(target any) bool })
	return ok && a.As(target)
}
