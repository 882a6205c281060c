module github.com/omnibusmq/omnibus

go 1.26.0

require (
	github.com/google/uuid v1.6.0
	go.yaml.in/yaml/v3 v3.0.6
	golang.org/x/time v0.16.0
)
