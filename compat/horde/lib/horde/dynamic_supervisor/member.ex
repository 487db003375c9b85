defmodule Horde.DynamicSupervisor.Member do
  @moduledoc """
  A member of a `Horde.DynamicSupervisor`, as distribution strategies and
  `:sys.get_state(supervisor).members_info` show it.

  `name` is `{supervisor_name, node}`; `status` is `:uninitialized` (listed, not yet heard
  from), `:alive` (the only placement target), `:shutting_down` or `:dead`.
  """

  @type status :: :uninitialized | :alive | :shutting_down | :dead
  @type t :: %__MODULE__{status: status(), name: {atom(), node()}}

  defstruct [:status, :name]
end
