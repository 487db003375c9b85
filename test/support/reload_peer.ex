defmodule Drove.Test.ReloadPeer do
  @moduledoc false
  # Hot code upgrade of Drove.Native, run ON a peer node (the test node's other tests keep
  # their module untouched).

  alias Drove.Native

  @doc """
  Loads `module` again from its beam (the running code becomes old code, and the NIF library's
  upgrade callback runs), then purges the old code (its unload callback runs). `:ok`.
  """
  @spec reload(module()) :: :ok
  def reload(module) do
    {:module, ^module} = :code.load_file(module)
    purge(module)
  end

  # A process in the middle of a call to the old code (a dirty NIF, say) keeps soft_purge
  # from purging; it ends that call soon, and is never killed for it.
  defp purge(module) do
    if :code.soft_purge(module) do
      :ok
    else
      Process.sleep(1)
      purge(module)
    end
  end

  @doc """
  Builds a placement ring, reloads Drove.Native twice, and returns the owners of a few hashes
  read before, between and after the reloads through the same ring resource.
  """
  @spec ring_across_reloads() :: [[non_neg_integer()]]
  def ring_across_reloads do
    ring = Native.ring_new([[10], [20]])
    owners = fn -> Native.ring_owners(ring, [5, 15, 25]) end
    before = owners.()
    :ok = reload(Native)
    between = owners.()
    :ok = reload(Native)
    [before, between, owners.()]
  end
end
