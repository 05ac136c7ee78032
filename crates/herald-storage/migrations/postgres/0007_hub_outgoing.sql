-- Outgoing events and bytes per partition: each node adds what its edges
-- delivered (HTTP pull, AMQP receivers) about once a second.
ALTER TABLE hub_partitions ADD COLUMN events_out BIGINT NOT NULL DEFAULT 0;
ALTER TABLE hub_partitions ADD COLUMN bytes_out BIGINT NOT NULL DEFAULT 0;
