"""The seed's pieces as the lab runs them: kube-proxy's rules and port holder,
keepalived, RabbitMQ (cookie, TLS), the SYN hook counters, a DNS responder."""
