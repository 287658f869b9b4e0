"""`callgate replica`: a proxy host's copy of the compiled snapshots, kept in step with the server
(`follow.Follower`); proxy workers decide from it with `engine.replica.LocalDecisions`."""
