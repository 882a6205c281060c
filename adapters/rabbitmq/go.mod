module github.com/omnibusmq/omnibus/adapters/rabbitmq

go 1.26.0

require (
	github.com/google/uuid v1.6.0
	github.com/rabbitmq/amqp091-go v1.16.0
)

require github.com/omnibusmq/omnibus v0.0.0-00010101000000-000000000000

replace github.com/omnibusmq/omnibus => ../..
