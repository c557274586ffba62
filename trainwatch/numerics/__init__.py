"""Pure numerical code (numpy only, no Keras): testable without a framework."""
