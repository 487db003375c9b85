defmodule Drove.Options do
  @moduledoc false
  # Shared checks of keyword options: every public start function raises ArgumentError with
  # a sentence saying what is accepted.

  # Process.send_after/3's largest time
  @max_sync_interval 4_294_967_295
  # the largest binary a peer's decoder accepts (DV_MAX_MESSAGE in c_src/codec.h)
  @max_message_bytes 268_435_456

  @doc "The replication options every instance takes, checked: `{sync_interval, max_bytes}`."
  @spec replication!(keyword(), pos_integer()) :: {pos_integer(), pos_integer()}
  def replication!(opts, default_interval \\ 500) do
    {int_in!(opts, :sync_interval, default_interval, 1, @max_sync_interval),
     int_in!(opts, :max_message_bytes, 1_048_576, 1, @max_message_bytes)}
  end

  @doc "`opts[key]` (or `default`), raising unless it is an integer in `min..max`."
  @spec int_in!(keyword(), atom(), integer(), integer(), integer()) :: integer()
  def int_in!(opts, key, default, min, max) do
    case Keyword.get(opts, key, default) do
      n when is_integer(n) and n >= min and n <= max ->
        n

      o ->
        raise ArgumentError,
              "#{inspect(key)} must be an integer in #{min}..#{max}, got: #{inspect(o)}"
    end
  end

  @doc "Raises unless `opts` is a keyword list whose keys are all in `known`."
  @spec known!(term(), [atom()], String.t()) :: :ok
  def known!(opts, known, what) when is_list(opts) do
    Enum.each(opts, fn
      {k, _} when is_atom(k) ->
        unless k in known do
          raise ArgumentError,
                "unknown #{what} option #{inspect(k)}; accepted: #{inspect(known)}"
        end

      other ->
        raise ArgumentError,
              "#{what} options are a keyword list, got the element #{inspect(other)}"
    end)
  end

  def known!(other, _known, what) do
    raise ArgumentError, "#{what} options are a keyword list, got: #{inspect(other)}"
  end
end
