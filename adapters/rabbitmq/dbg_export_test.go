package rabbitmq

func AckFramesDbg() int64 { return ackFramesDbg.Swap(0) }
