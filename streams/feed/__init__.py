"""`mlrisk feed`: Binance's combined-stream websocket to `market-data`, kept connected, in sequence and complete.

connection.py keeps one websocket per group of streams alive; book_sync.py follows Binance's local-order-book
procedure to tell when a new depth snapshot is needed; backfill.py fetches the trades a disconnection missed;
rest.py talks to the REST API within its weight limits; publisher.py is the bounded, idempotent Kafka producer;
service.py composes them and serves /health and /metrics.
"""
