"""Everything that speaks Ray, and the only package that imports it: the session and the
cluster's view, authentication, gangs as placement groups, the admission queue's actor and its
lease client, the backend that runs a step attempt, Ray Train (train steps), Ray Tune (sweeps),
and a run as Ray jobs with job-level retry.
"""
