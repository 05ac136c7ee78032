-- Topic log retention (RouterStore::prune_event_log): a consumed event stays
-- while an in-flight message or a dead letter refers to it, and messages go
-- with events that age out. These indexes make each check one lookup.

CREATE INDEX subscription_messages_seq ON subscription_messages (seq);
CREATE INDEX dead_letters_seq ON dead_letters (seq);
