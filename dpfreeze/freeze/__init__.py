"""The running freeze: state machine, service, control protocol, pin, hand-over, restorer."""
