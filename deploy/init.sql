-- Demo schema for the compose file: a table, the publication and the walcast role.
CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric(12,2));
ALTER TABLE accounts REPLICA IDENTITY FULL;
CREATE ROLE walcast WITH LOGIN REPLICATION PASSWORD 'walcast';
CREATE PUBLICATION walcast FOR TABLE accounts;
GRANT SELECT ON accounts TO walcast;
