"""Where seed models come from: model files (safe loading), built-in seeds and
`keras.applications`."""
