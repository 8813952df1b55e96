"""Real-time video stream processing: N sources -> bounded queues -> batched inference -> MQTT results.

See :mod:`edgeloop.stream.processor` for the design and :mod:`edgeloop.stream.cli`
for the ``edgeloop stream`` command. Results follow ``result.schema.json``.
"""
