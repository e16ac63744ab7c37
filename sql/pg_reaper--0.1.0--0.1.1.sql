-- pg_reaper 0.1.0 -> 0.1.1: the hardening release. Every change is in the library (the pin
-- between a victim's identity check and its signal, the hidden-column matching, the truthful
-- audit failures, the SQLSTATEs, the reserved settings prefix); the catalog is unchanged.
\echo Use "ALTER EXTENSION pg_reaper UPDATE TO '0.1.1'" to load this file. \quit
