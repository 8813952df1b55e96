"""The shared core: settings, errors, blob storage, Label Studio conventions, preprocessing,
model cards and model loading, payload-log records. Imported by every feature; imports none of them."""
