# compat/horde has its own .formatter.exs (it is a separate mix project).
[
  inputs: ["{mix,.formatter}.exs", "{config,lib,test,bench,demo}/**/*.{ex,exs}"]
]
