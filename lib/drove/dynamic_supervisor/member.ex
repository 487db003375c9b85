defmodule Drove.DynamicSupervisor.Member do
  @moduledoc """
  A member of a distributed dynamic supervisor, as distribution strategies see it.

  `name` is `{supervisor_name, node}`. `status` is one of:

    * `:alive` - running and accepting children (the only placement target);
    * `:uninitialized` - listed as a member, but not yet heard from;
    * `:shutting_down` - stopping gracefully, handing its children to the others;
    * `:dead` - its node or supervisor went away (as this node observes it).
  """

  @type status :: :alive | :uninitialized | :shutting_down | :dead
  @type t :: %__MODULE__{name: {atom(), node()}, status: status()}

  @enforce_keys [:name, :status]
  defstruct [:name, :status]
end
