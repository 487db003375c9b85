defmodule Drove do
  @moduledoc """
  Drove: a distribution layer for the BEAM whose core is written in C.

  Built so far:

    * `Drove.CRDT` - a replicated map (add-wins, last-writer-wins delta-CRDT) with a
      DeltaCrdt-like API, eager delta push and digest anti-entropy between nodes.

  See the README for the status of the registry, dynamic supervisor, membership and
  placement layers.
  """
end
