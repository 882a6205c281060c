module github.com/omnibusmq/omnibus/integration/faults

go 1.26.0

require (
	github.com/Shopify/toxiproxy/v2 v2.5.0
	github.com/omnibusmq/omnibus v0.0.0-00010101000000-000000000000
	github.com/omnibusmq/omnibus/adapters/activemq v0.0.0-00010101000000-000000000000
	github.com/omnibusmq/omnibus/adapters/kafka v0.0.0-00010101000000-000000000000
	github.com/omnibusmq/omnibus/adapters/nsq v0.0.0-00010101000000-000000000000
	github.com/omnibusmq/omnibus/adapters/postgres v0.0.0-00010101000000-000000000000
	github.com/omnibusmq/omnibus/adapters/rabbitmq v0.0.0-00010101000000-000000000000
	github.com/rs/zerolog v1.28.0
)

require (
	github.com/Azure/go-amqp v1.7.0 // indirect
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/golang/snappy v0.0.4 // indirect
	github.com/google/uuid v1.6.0 // indirect
	github.com/gorilla/mux v1.8.0 // indirect
	github.com/jackc/pgpassfile v1.0.0 // indirect
	github.com/jackc/pgservicefile v0.0.0-20240606120523-5a60cdf6a761 // indirect
	github.com/jackc/pgx/v5 v5.12.0 // indirect
	github.com/jackc/puddle/v2 v2.2.3 // indirect
	github.com/klauspost/compress v1.20.3 // indirect
	github.com/mattn/go-colorable v0.1.13 // indirect
	github.com/mattn/go-isatty v0.0.24 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/nsqio/go-nsq v1.1.0 // indirect
	github.com/pierrec/lz4/v4 v4.1.33 // indirect
	github.com/prometheus/client_golang v1.25.0 // indirect
	github.com/prometheus/client_model v0.6.3 // indirect
	github.com/prometheus/common v0.72.0 // indirect
	github.com/prometheus/procfs v0.22.0 // indirect
	github.com/rabbitmq/amqp091-go v1.16.0 // indirect
	github.com/rs/xid v1.4.0 // indirect
	github.com/twmb/franz-go v1.22.3 // indirect
	github.com/twmb/franz-go/pkg/kadm v1.20.0 // indirect
	github.com/twmb/franz-go/pkg/kmsg v1.15.1 // indirect
	golang.org/x/sync v0.25.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	golang.org/x/text v0.44.0 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
	gopkg.in/tomb.v1 v1.0.0-20141024135613-dd632973f1e7 // indirect
)

replace (
	github.com/omnibusmq/omnibus => ../..
	github.com/omnibusmq/omnibus/adapters/activemq => ../../adapters/activemq
	github.com/omnibusmq/omnibus/adapters/kafka => ../../adapters/kafka
	github.com/omnibusmq/omnibus/adapters/nsq => ../../adapters/nsq
	github.com/omnibusmq/omnibus/adapters/postgres => ../../adapters/postgres
	github.com/omnibusmq/omnibus/adapters/rabbitmq => ../../adapters/rabbitmq
)
