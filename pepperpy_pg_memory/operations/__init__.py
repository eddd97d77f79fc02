"""What ``PostgresStorage``'s public methods do, one concern per module.

Each operation is a function of the :class:`~.started.Started` context ``start()`` builds
(configuration, tenant, layout, statements, database, embedding pipeline, row mapping) and
of the call's checked arguments; none imports the storage class. The facade validates, calls
one operation and returns.
"""
