-- A random name this database gets once, the same for every process that uses it: instances
-- name their shared state in Redis with it, so deployments that share one Redis never mix.
CREATE TABLE deployment (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    id text NOT NULL
);
INSERT INTO deployment (id) VALUES (replace(gen_random_uuid()::text, '-', ''));
