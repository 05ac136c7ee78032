-- Values a job has read (secrets, encrypted assets), sealed, so every node
-- that records the job's output masks them, whichever node served them.
CREATE TABLE job_masks (
    job_id TEXT NOT NULL,
    digest TEXT NOT NULL,                 -- sha256 of the value, for dedup
    sealed BYTEA NOT NULL,
    PRIMARY KEY (job_id, digest)
);
